"""The authors' released PyTorch state dicts mapped onto this project's models.

The released models (`modeling_vqhbr.vqhbr`, `modeling_pretrain.HeartLang`,
`modeling_finetune.HeartLang_finetune_base`) are read as dicts of NumPy arrays, so nothing here
needs PyTorch. Two parts: the config inferred from a state dict's shapes (`encoder_config`,
`vqhbr_config`; the split of the attention width into heads is not recorded, hence `head_dim`),
and the tensor mapping, one function per model (`backbone_params` is the table of the
backbone's names). `build_*` do both and load the weights. `heartlang_jax.convert_released`
is the command that writes the converted models as run folders.

Every converted encoder is `position="learned"` with the released block details
(`ecgformer.RELEASED_BLOCK`) and `mask_padding=False` (the released attention attends padding).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from heartlang_jax import errors
from heartlang_jax.models.ecgformer import RELEASED_BLOCK, ECGFormerConfig

RELEASED_HEAD_DIM = 64
# Dropout of the released training runs (get_model_default_params): VQ-HBR 0, the others 0.1 on
# embeddings, attention weights and block outputs alike.
RELEASED_DROPOUT = {"vqhbr": 0.0, "pretrain": 0.1, "finetune": 0.1}

StateDict = Mapping[str, np.ndarray]


class ConversionError(errors.HeartLangError, ValueError):
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
        **RELEASED_BLOCK,
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
