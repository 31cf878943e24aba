"""Converted released weights against the outputs the released PyTorch code recorded.

`tools/make_released_fixture.py` records the released models' weights, inputs and outputs; this
converts the weights (`heartlang_jax.models.released_weights`) and runs our models on the same
inputs. Used by `tests/test_released_conversion.py` and `benchmarks/released_check.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np

from heartlang_jax.models.released_weights import build_finetune, build_pretrain, build_vqhbr


def recorded_state(arrays: Mapping[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """The state dict of one model in a recorded fixture (`tools/make_released_fixture.py`).

    The fine-tuned classifier's backbone is stored once, as the pre-training model's weights.
    """
    state = {k.split("/", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith(model + "/")}
    if model == "finetune":
        for name, value in recorded_state(arrays, "pretrain").items():
            state.setdefault("backbone." + name, value)
    return state


def _relative_error(got, want) -> tuple[float, float]:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want)))
    return err, err / max(float(np.max(np.abs(want))), 1e-30)


def compare_with_recorded(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Converts the recorded released weights and runs our models on the recorded inputs.

    Returns figures (max abs / relative-to-max-abs errors, word-id agreement over real words) for:
    VQ-HBR encoder features, pre-quantization vectors, quantizer loss, word ids and
    reconstruction; pre-training hidden states (all tokens, CLS included) and masked-word logits;
    fine-tuning logits. All in float32 on the default backend.
    """
    import jax.numpy as jnp

    from heartlang_jax.models import masked_positions

    head_dim = int(arrays["head_dim"])
    words = jnp.asarray(arrays["words"], jnp.float32)
    lead_ids = jnp.asarray(arrays["lead_ids"], jnp.int32)
    time_ids = jnp.asarray(arrays["time_ids"], jnp.int32)
    real = np.asarray(arrays["lead_ids"]) != 0
    figures: dict[str, float] = {"real_words": float(real.sum())}

    def record(name, got, want):
        figures[f"{name}_max_abs"], figures[f"{name}_rel"] = _relative_error(got, want)

    if "vqhbr_ids" in arrays:
        vq = build_vqhbr(recorded_state(arrays, "vqhbr"), head_dim=head_dim)
        features = np.asarray(vq.encoder(words, lead_ids, time_ids))[:, vq.encoder.num_prefix_tokens :]
        record("vqhbr_features", features[real], arrays["vqhbr_features"][real])
        record("vqhbr_z", np.asarray(vq.encode(words, lead_ids, time_ids))[real], arrays["vqhbr_z"][real])
        ids = np.asarray(vq.word_ids(words, lead_ids, time_ids))
        figures["word_id_agreement"] = float(np.mean(ids[real] == arrays["vqhbr_ids"][real]))
        figures["word_id_mismatches"] = float(np.sum(ids[real] != arrays["vqhbr_ids"][real]))
        # The released quantizer loss, F.mse_loss over every position (padding included) of its z.
        z = jnp.asarray(arrays["vqhbr_z"])
        loss = vq.quantizer(z, jnp.ones(z.shape[:-1], bool), update=False).commitment_loss
        record("vqhbr_loss", np.asarray(loss), arrays["vqhbr_loss"])
        codes = vq.quantizer.lookup(jnp.asarray(arrays["vqhbr_ids"], jnp.int32))
        record("vqhbr_reconstruction", np.asarray(vq.decode(codes, lead_ids, time_ids)), arrays["vqhbr_reconstruction"])
    if "pretrain_logits" in arrays:
        model = build_pretrain(recorded_state(arrays, "pretrain"), head_dim=head_dim)
        mask = jnp.asarray(arrays["mask"], bool)
        x = model.encoder.embed_words(words)
        x = jnp.where(mask[..., None], model.mask_token[...].astype(x.dtype), x)
        hidden = model.encoder.encode(x, lead_ids, time_ids)  # [B, 1 + L, D]
        record("pretrain_hidden", np.asarray(hidden), arrays["pretrain_hidden"])
        positions, valid = masked_positions(mask, int(np.max(np.sum(arrays["mask"], axis=1))))
        logits = np.asarray(model.logits_at(hidden[:, model.encoder.num_prefix_tokens :], positions))
        record("pretrain_logits", logits[np.asarray(valid)], arrays["pretrain_logits"])
    if "finetune_logits" in arrays:
        model = build_finetune(recorded_state(arrays, "finetune"), head_dim=head_dim)
        record("finetune_logits", np.asarray(model(words, lead_ids, time_ids)), arrays["finetune_logits"])
    return figures


def compare_filtered_records(
    arrays: Mapping[str, np.ndarray], scratch: str | os.PathLike, *, our_filter: bool = True
) -> dict[str, float]:
    """Our whole path from a raw record against the released preprocessing + get_codebook_indices.

    Writes the recorded raw 500 Hz records (`filtered_records`) in MIMIC-IV-ECG's layout under
    `scratch`, converts the recorded VQ-HBR into a run folder (`convert_released.write_run`: its
    model.json carries the released MIMIC band-pass) and reads each record with
    `heartlang_jax.load(run).word_ids(path)`: our resampling, filter and tokenizer. The recording
    (`tools/make_released_fixture.py`) filtered the same records with the released script's own
    functions, cut them with our tokenizer at the released settings and ran the released
    `get_codebook_indices`. Returns the word-id agreement over the released sentences' real words
    (a word whose lead and beat position differ from ours counts as a disagreement), and the
    number of records whose sentences (lead and time ids) differ. `our_filter=False` writes the
    run folder without the filter (a control: the unfiltered words the issue was about).
    """
    import dataclasses
    import pathlib

    import heartlang_jax
    from heartlang_jax import convert_released
    from heartlang_jax.ecg import sentence_spec
    from heartlang_jax.ecg.records import STANDARD_LEADS

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))
    from make_released_fixture import write_mimic_record

    scratch = pathlib.Path(scratch)
    head_dim = int(arrays["head_dim"])
    want_leads = np.asarray(arrays["filtered_lead_ids"])
    # The tiny recording reads leads I-III (lead ids 1-3), the released-size one all 12.
    leads = STANDARD_LEADS[: int(want_leads.max())]
    spec = dataclasses.replace(sentence_spec.RELEASED_MIMIC, leads=leads)
    if not our_filter:
        spec = dataclasses.replace(spec, filter=None)
    vq = build_vqhbr(recorded_state(arrays, "vqhbr"), head_dim=head_dim)
    convert_released.write_run(scratch / "vqhbr", "vqhbr", vq, spec=spec)
    model = heartlang_jax.load(scratch / "vqhbr")
    agree = total = differing = 0
    for i, digital in enumerate(np.asarray(arrays["filtered_records"])):
        study = 40000000 + i
        path = write_mimic_record(scratch / "files" / "p1000" / "p10000032" / f"s{study}", study, digital)
        ids = model.word_ids(path)
        sentence = model.sentence(path)
        real = want_leads[i] != 0
        want = np.asarray(arrays["filtered_vqhbr_ids"])[i][real]
        total += int(real.sum())
        same = (
            sentence.num_words == int(real.sum())
            and np.array_equal(sentence.lead_ids[: sentence.num_words], want_leads[i][real])
            and np.array_equal(
                sentence.time_ids[: sentence.num_words], np.asarray(arrays["filtered_time_ids"])[i][real]
            )
        )
        if same:
            agree += int(np.sum(ids == want))
        else:
            differing += 1
    return {
        "filtered_records": float(len(arrays["filtered_records"])),
        "filtered_real_words": float(total),
        "filtered_word_id_agreement": agree / total,
        "filtered_word_id_mismatches": float(total - agree),
        "filtered_records_with_other_sentences": float(differing),
    }
