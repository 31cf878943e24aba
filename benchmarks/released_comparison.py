"""Converted released weights against the outputs the released PyTorch code recorded.

`tools/make_released_fixture.py` records the released models' weights, inputs and outputs; this
converts the weights (`heartlang_jax.models.released_weights`) and runs our models on the same
inputs. Used by `tests/test_released_conversion.py` and `benchmarks/released_check.py`.
"""

from __future__ import annotations

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
