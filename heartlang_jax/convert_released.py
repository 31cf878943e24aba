"""Converts the authors' released PyTorch checkpoints into this project's run folders.

    python -m heartlang_jax.convert_released --vqhbr=checkpoint-100.pth \
        --pretrain=checkpoint-200.pth --finetune=checkpoint-best.pth --out=runs/released

Each released file holds {"model": state_dict, ...}. The command writes one self-contained run
folder per file given (`<out>/vqhbr`, `<out>/pretrain`, `<out>/finetune`: `model.json` and
`checkpoints/0/`), which the stages and `heartlang_jax.load` read like folders they made
themselves:

  - VQ-HBR (`modeling_vqhbr.vqhbr`): the vocabulary; `VQHBR.word_ids` gives the released
    `get_codebook_indices` ids for real words (padding words, whose ids the released code leaves
    to its task head, are 0 here).
  - pre-training (`modeling_pretrain.HeartLang`): a `MaskedEcgModel`; its encoder initialises
    fine-tuning (`--config.init_workdir`).
  - fine-tuning (`modeling_finetune.HeartLang_finetune_base`): an `EcgClassifier` reading the
    CLS token (give `--class_names` and `--task`).

Every converted encoder is `position="learned"` with the released block details (no Q/K/V bias,
LayerNorm epsilon 1e-5) and `mask_padding=False` (the released attention attends padding words).
Sizes come from the tensors' shapes, except the split of the attention width into heads, which
the state dict does not record: `--head_dim` (64 in every released model).

Reading `.pth` needs PyTorch, an optional extra for this command only (`pip install torch`); the
mapping functions below take a dict of NumPy arrays and are tested without it.

Input facts recorded in `model.json`, from the released code: sentences are cut by XQRS on lead I
at 100 Hz, 256 words of 96 samples, 12 leads. The released MIMIC-IV pre-processing
(`mimic_preprocess.py`, `is_norm=False`) band-passes (0.67-40 Hz) but does not standardize, so the
VQ-HBR and pre-training folders record amplitude mean 0, std 1 (raw mV). Its PTB-XL fine-tuning
data come from the PTB-XL benchmark code, which standardizes with the training folds' mean and std;
pass those as `--amplitude_mean/--amplitude_std` for a fine-tuned model (default 0 and 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

RELEASED_HEAD_DIM = 64
# The released tokenization (QRSTokenizer.py): XQRS on lead I at 100 Hz, 256 words x 96 samples.
RELEASED_SENTENCE = {
    "leads": ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"],
    "max_len": 256,
    "token_len": 96,
    "fs": 100,
    "detector": "xqrs",
    "max_duration_s": 10.0,
    "min_leads": 1,
    "reject_flat_leads": False,
}
RELEASED_DATASET = {
    "vqhbr": "mimic-iv-ecg (released)",
    "pretrain": "mimic-iv-ecg (released)",
    "finetune": "ptbxl (released)",
}
# Dropout of the released training runs (get_model_default_params): VQ-HBR 0, the others 0.1 on
# embeddings, attention weights and block outputs alike.
RELEASED_DROPOUT = {"vqhbr": 0.0, "pretrain": 0.1, "finetune": 0.1}

StateDict = Mapping[str, np.ndarray]


class ConversionError(ValueError):
    """A state dict that does not look like the released model it was given as."""


def _get(sd: StateDict, name: str) -> np.ndarray:
    if name not in sd:
        raise ConversionError(f"released state dict has no {name!r} (keys start: {sorted(sd)[:6]})")
    return np.asarray(sd[name], np.float32)


def _num_layers(sd: StateDict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.layers\.(\d+)\.")
    layers = {int(m.group(1)) for key in sd if (m := pattern.match(key))}
    if not layers or layers != set(range(len(layers))):
        raise ConversionError(f"no contiguous transformer.layers.<i> under {prefix!r}")
    return len(layers)


def encoder_config(sd: StateDict, prefix: str = "", *, head_dim: int = RELEASED_HEAD_DIM, dropout_rate: float = 0.0):
    """The ECGFormerConfig of the released backbone whose tensors start with `prefix`."""
    from heartlang_jax.models import ECGFormerConfig

    conv = _get(sd, prefix + "token_embed.tokenConv.weight")  # [D, T, 3]
    hidden, token_len, _ = conv.shape
    qkv = _get(sd, prefix + "transformer.layers.0.0.to_qkv.weight")  # [3 * inner, D]
    inner = qkv.shape[0] // 3
    if inner % head_dim:
        raise ConversionError(f"attention width {inner} is not a multiple of head_dim {head_dim}")
    return ECGFormerConfig(
        num_layers=_num_layers(sd, prefix),
        hidden_dim=hidden,
        mlp_dim=_get(sd, prefix + "transformer.layers.0.1.net.1.weight").shape[0],
        num_heads=inner // head_dim,
        head_dim=head_dim,
        token_len=token_len,
        max_len=_get(sd, prefix + "pos_embed").shape[1] - 1,
        num_lead_ids=_get(sd, prefix + "spa_embed.embed.weight").shape[0],
        num_time_ids=_get(sd, prefix + "tem_embed.embed.weight").shape[0],
        position="learned",
        mask_padding=False,
        dropout_rate=dropout_rate,
        attention_dropout_rate=dropout_rate,
    )


def _linear(sd: StateDict, name: str, bias: bool = True) -> dict:
    out = {"kernel": _get(sd, name + ".weight").T}  # torch [out, in] -> [in, out]
    if bias:
        out["bias"] = _get(sd, name + ".bias")
    return out


def _norm(sd: StateDict, name: str) -> dict:
    return {"scale": _get(sd, name + ".weight"), "bias": _get(sd, name + ".bias")}


def backbone_params(sd: StateDict, prefix: str = "") -> dict:
    """Released backbone tensors under `prefix` -> the nested Param dict of our ECGFormer.

    The blocks come out stacked on a leading layer axis, as `ECGFormer.blocks` holds them.
    """
    layers = []
    for i in range(_num_layers(sd, prefix)):
        p = f"{prefix}transformer.layers.{i}."
        # to_qkv is [3 * inner, D] with Q, K, V stacked on the output (chunk(3)); our fused qkv
        # kernel is its transpose, columns Q then K then V.
        qkv = _get(sd, p + "0.to_qkv.weight")
        layers.append(
            {
                "norm1": _norm(sd, p + "0.norm"),
                "attn": {
                    "qkv": {"kernel": qkv.T},
                    "out": _linear(sd, p + "0.to_out.0"),
                },
                "norm2": _norm(sd, p + "1.net.0"),
                "mlp": {"fc1": _linear(sd, p + "1.net.1"), "fc2": _linear(sd, p + "1.net.4")},
            }
        )
    import jax  # tree utilities only

    blocks = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    return {
        "token_embed": {"kernel": np.transpose(_get(sd, prefix + "token_embed.tokenConv.weight"), (2, 1, 0))},
        "lead_embed": {"embedding": _get(sd, prefix + "spa_embed.embed.weight")},
        "time_embed": {"embedding": _get(sd, prefix + "tem_embed.embed.weight")},
        "cls_token": _get(sd, prefix + "cls_token").reshape(-1),
        "pos_embed": _get(sd, prefix + "pos_embed")[0],
        "blocks": blocks,
        "final_norm": _norm(sd, prefix + "norm_layer"),
    }


def _task_head(sd: StateDict, name: str) -> dict:
    return {"fc1": _linear(sd, name + ".0"), "fc2": _linear(sd, name + ".2")}


def vqhbr_config(sd: StateDict, *, head_dim: int = RELEASED_HEAD_DIM):
    from heartlang_jax.models import VQHBRConfig

    codebook = _get(sd, "quantize.embedding.weight")  # [K, d]
    return VQHBRConfig(
        encoder=encoder_config(sd, "encoder.", head_dim=head_dim),
        decoder=encoder_config(sd, "decoder.", head_dim=head_dim),
        num_codes=codebook.shape[0],
        code_dim=codebook.shape[1],
        decay=0.99,
        commitment_weighting="mean",
    )


def vqhbr_state(sd: StateDict) -> dict:
    """Params and codebook of the released VQHBR -> our VQHBR's nested state dict."""
    codebook = _get(sd, "quantize.embedding.weight")
    norms = np.linalg.norm(codebook, axis=-1, keepdims=True)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ConversionError("released codebook rows are not unit-norm: was the k-means init ever run?")
    return {
        "encoder": backbone_params(sd, "encoder."),
        "encode_head": _task_head(sd, "encode_task_layer"),
        "decoder": backbone_params(sd, "decoder."),
        "decode_head": _task_head(sd, "decode_task_layer"),
        "quantizer": {
            # Renormalized in float32 as our EMA step leaves it (the released rows are unit-norm).
            "codebook": codebook / norms,
            "cluster_size": _get(sd, "quantize.embedding.cluster_size"),
            "initialized": np.asarray(True),
        },
    }


def pretrain_state(sd: StateDict, prefix: str = "") -> dict:
    """Released ST_ECGFormer (`HeartLang`) -> our MaskedEcgModel's nested Param dict."""
    return {
        "encoder": backbone_params(sd, prefix),
        "mask_token": _get(sd, prefix + "mask_token").reshape(-1),
        "lm_head": _linear(sd, prefix + "lm_head"),
    }


def finetune_state(sd: StateDict) -> dict:
    """Released ST_ECGFormerClassifier -> our EcgClassifier's nested Param dict."""
    return {"encoder": backbone_params(sd, "backbone."), "head": _linear(sd, "mlp_head")}


def _load_into(model, nested: Mapping) -> None:
    """Writes the nested arrays into `model`'s variables; every Param must get a tensor that fits."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    seen = set()

    def visit(tree, target, path):
        for key, value in tree.items():
            where = path + (key,)
            if key not in target:
                raise ConversionError(f"converted tensor {'/'.join(where)} has no place in {type(model).__name__}")
            if isinstance(value, Mapping):
                visit(value, target[key], where)
                continue
            old = target[key]
            if tuple(np.shape(value)) != tuple(old.shape):
                raise ConversionError(f"{'/'.join(where)}: converted shape {np.shape(value)}, model wants {old.shape}")
            target[key] = jnp.asarray(value, old.dtype)
            seen.add(where)

    visit(nested, pure, ())
    params = {tuple(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    missing = sorted("/".join(p) for p in params - {tuple(map(str, w)) for w in seen})
    if missing:
        raise ConversionError(f"no released tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def build_vqhbr(sd: StateDict, *, head_dim: int = RELEASED_HEAD_DIM):
    from flax import nnx

    from heartlang_jax.models import VQHBR

    model = VQHBR(vqhbr_config(sd, head_dim=head_dim), rngs=nnx.Rngs(0))
    _load_into(model, vqhbr_state(sd))
    model.eval()
    return model


def build_pretrain(
    sd: StateDict, *, head_dim: int = RELEASED_HEAD_DIM, dropout_rate: float = RELEASED_DROPOUT["pretrain"]
):
    from flax import nnx

    from heartlang_jax.models import MaskedEcgModel

    config = encoder_config(sd, head_dim=head_dim, dropout_rate=dropout_rate)
    model = MaskedEcgModel(config, _get(sd, "lm_head.weight").shape[0], rngs=nnx.Rngs(0))
    _load_into(model, pretrain_state(sd))
    model.eval()
    return model


def build_finetune(
    sd: StateDict, *, head_dim: int = RELEASED_HEAD_DIM, dropout_rate: float = RELEASED_DROPOUT["finetune"]
):
    from flax import nnx

    from heartlang_jax.models import EcgClassifier

    config = encoder_config(sd, "backbone.", head_dim=head_dim, dropout_rate=dropout_rate)
    model = EcgClassifier(config, _get(sd, "mlp_head.weight").shape[0], rngs=nnx.Rngs(0))
    _load_into(model, finetune_state(sd))
    model.eval()
    return model


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


def _encoder_fields(config) -> dict:
    fields = dataclasses.asdict(config)
    fields.pop("dtype", None)
    return fields


def write_run(
    out_dir: str | os.PathLike,
    kind: str,
    model,
    *,
    amplitude: Mapping[str, float] | None = None,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """One run folder: model.json (RunInfo) and checkpoints/0 with the converted weights."""
    from heartlang_jax import checkpointing, run_info

    encoder = model.config.encoder if kind == "vqhbr" else model.encoder.config
    # The released sentence facts, with the model's own sentence length (256 when released).
    sentence = {**RELEASED_SENTENCE, "max_len": encoder.max_len, "token_len": encoder.token_len}
    if kind == "vqhbr":
        fields = dataclasses.asdict(model.config)
        for part in ("encoder", "decoder"):
            fields[part].pop("dtype", None)
    elif kind == "pretrain":
        fields = {"encoder": _encoder_fields(model.encoder.config), "vocab_size": int(model.lm_head.kernel.shape[1])}
    else:
        fields = {"encoder": _encoder_fields(model.encoder.config), "num_classes": int(model.head.kernel.shape[1])}
    info = run_info.RunInfo(
        kind=kind,
        model=fields,
        sentence=sentence,
        amplitude=dict(amplitude or {"mean": 0.0, "std": 1.0}),
        dataset=RELEASED_DATASET[kind],
        task=task,
        class_names=tuple(class_names) if class_names else None,
    )
    os.makedirs(out_dir, exist_ok=True)
    checkpoints = checkpointing.RunCheckpoints(out_dir)
    checkpoints.save(0, model, None, {}, {"converted_from": "released PyTorch checkpoint"})
    checkpoints.close()
    run_info.write(out_dir, info)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a released checkpoint file as NumPy arrays (needs PyTorch)."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit("reading .pth checkpoints needs PyTorch: pip install torch (CPU wheel is enough)") from e
    checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint)) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected {{'model': state_dict, ...}}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vqhbr", help="released VQ-HBR checkpoint (.pth)")
    parser.add_argument("--pretrain", help="released pre-training checkpoint (.pth)")
    parser.add_argument("--finetune", help="released fine-tuning checkpoint (.pth)")
    parser.add_argument("--out", required=True, help="folder for the run folders vqhbr/, pretrain/, finetune/")
    parser.add_argument("--head_dim", type=int, default=RELEASED_HEAD_DIM, help="attention head size (released: 64)")
    parser.add_argument("--task", default=None, help="fine-tuning task name, e.g. superdiagnostic")
    parser.add_argument("--class_names", default="", help="comma-separated class names of the fine-tuned head")
    parser.add_argument("--amplitude_mean", type=float, default=0.0, help="fine-tuning data standardization mean")
    parser.add_argument("--amplitude_std", type=float, default=1.0, help="fine-tuning data standardization std")
    args = parser.parse_args(argv)
    if not (args.vqhbr or args.pretrain or args.finetune):
        parser.error("give at least one of --vqhbr, --pretrain, --finetune")
    done = []
    if args.vqhbr:
        model = build_vqhbr(read_pth(args.vqhbr), head_dim=args.head_dim)
        write_run(os.path.join(args.out, "vqhbr"), "vqhbr", model)
        done.append("vqhbr")
    if args.pretrain:
        model = build_pretrain(read_pth(args.pretrain), head_dim=args.head_dim)
        write_run(os.path.join(args.out, "pretrain"), "pretrain", model)
        done.append("pretrain")
    if args.finetune:
        model = build_finetune(read_pth(args.finetune), head_dim=args.head_dim)
        num_classes = int(model.head.kernel.shape[1])
        names = [n for n in args.class_names.split(",") if n] or [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise SystemExit(f"--class_names has {len(names)} names, the head has {num_classes} outputs")
        write_run(
            os.path.join(args.out, "finetune"),
            "finetune",
            model,
            task=args.task,
            class_names=names,
            amplitude={"mean": args.amplitude_mean, "std": args.amplitude_std},
        )
        done.append("finetune")
    for kind in done:
        print(f"{kind}: {os.path.join(args.out, kind)}")


if __name__ == "__main__":
    main()
