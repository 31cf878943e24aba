"""What one pre-training step asks of an accelerator, read off the traced program (issue 19).

Everything is abstract (shapes only: `nnx.eval_shape`, `jax.make_jaxpr`, lowering), so the
paper's Base at global batch 256 in bfloat16 costs no real compute on a CPU. For a pre-training
config, a global batch and a compute dtype it prints:

- `flops`: XLA's cost analysis of the lowered loss-and-gradient program (forward + backward,
  optimizer update left out), with the layer scan unrolled so each layer is counted;
- `flops_at_mean_bucket`: the same for rows of the mean bucket length, when the config buckets;
- `real_positions`: the fraction of the token positions the encoder computes that are real
  words, on the train split of a built dataset (`--tfds_dir`; the bundled sample builds with
  `python -m heartlang_jax.main --config=configs/dataset.py --workdir=/tmp/i19data`), for the
  step's batching (one sentence per row of max_len, or the length buckets of
  `heartlang_jax.data.packing` when the config turns them on), and the same for the LM head's rows;
- `saved_activations`: the bytes of the residuals `jax.vjp` keeps for the backward pass (the
  outputs of the linearized forward that the backward reads), parameters and inputs left out,
  with the largest groups by shape;
- `attention`: the attention call the step lowers to on CPU, and for CUDA and TPU where JAX can
  lower for them here (`.trace(...).lower(lowering_platforms=(...))`), or why not.

The GPU step's residuals cannot be traced on a machine without cuDNN (JAX refuses to trace its
cuDNN attention there), so with `--attention=cudnn` the cuDNN call is replaced, for the residual
and FLOP count only, by a stand-in with cuDNN's residual set (q, k, v, the bias if any, the output
and float32 softmax statistics [B, N, L]) and its backward (which returns a bias gradient when a
bias is given, as JAX 0.10's cuDNN backward does).

    python benchmarks/step_anatomy.py                                # Base, batch 256, bfloat16
    python benchmarks/step_anatomy.py --config=heartlang_jax/configs/pretrain_base.py:tiny --batch=8
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline, packing
from heartlang_jax.models import masked_lm, splash
from heartlang_jax.stages import common

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pretrain_throughput import RELEASED_VOCAB, load_config

GIB = 2**30
# What attention_implementation="auto" picks on each backend in half precision.
ATTENTION_ON = {"cpu": "xla", "cuda": "cudnn", "tpu": "splash"}


@jax.custom_vjp
def _cudnn_standin(q, k, v, bias, q_len, kv_len):
    return _xla_attention(q, k, v, bias, q_len, kv_len)


def _xla_attention(q, k, v, bias, q_len, kv_len):
    mask = None
    if q_len is not None:
        length = q.shape[1]
        real_q = jnp.arange(length)[None, :] < q_len[:, None]
        real_k = jnp.arange(length)[None, :] < kv_len[:, None]
        mask = (real_q[:, :, None] & real_k[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")


def _standin_fwd(q, k, v, bias, q_len, kv_len):
    out = _xla_attention(q, k, v, bias, q_len, kv_len)
    stats = jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)  # softmax statistics [B, N, L]
    return out, (q, k, v, bias, q_len, kv_len, out, stats)


def _standin_bwd(residuals, g):
    q, k, v, bias, q_len, kv_len, out, stats = residuals
    _, vjp = jax.vjp(lambda q, k, v, b: _xla_attention(q, k, v, b, q_len, kv_len), q, k, v, bias)
    dq, dk, dv, dbias = vjp(g + 0 * out + 0 * stats[..., None].swapaxes(1, 2).astype(g.dtype))
    return dq, dk, dv, dbias, None, None


_cudnn_standin.defvjp(_standin_fwd, _standin_bwd)


def _standin_attention(query, key, value, bias=None, mask=None, *, implementation=None, **kwargs):
    """jax.nn.dot_product_attention, with the cuDNN call replaced by `_cudnn_standin`."""
    if implementation != "cudnn":
        return _real_attention(query, key, value, bias=bias, mask=mask, implementation=implementation, **kwargs)
    return _cudnn_standin(query, key, value, bias, kwargs.get("query_seq_lengths"), kwargs.get("key_value_seq_lengths"))


_real_attention = jax.nn.dot_product_attention


def build(
    config_path: str, batch: int, dtype: str, attention: str, vocab: int, unroll: bool, remat: str = "", length: int = 0
):
    """The abstract model, batch and the pure loss function of the real pre-training step."""
    raw = load_config(config_path)
    raw.dtype = dtype
    raw.model.encoder.attention_implementation = attention
    config = schema.validate(raw)
    encoder = common.ecgformer_config(config.model.encoder, dtype)
    if remat:
        encoder = dataclasses.replace(encoder, remat_policy=remat)
    if unroll:
        encoder = dataclasses.replace(encoder, scan_unroll=True)
    ratio = config.model.mask_ratio

    def make():
        return masked_lm.MaskedEcgModel(encoder, vocab, rngs=nnx.Rngs(0))

    model = nnx.eval_shape(make)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    length = length or encoder.max_len
    data = {
        "words": jax.ShapeDtypeStruct((batch, length, encoder.token_len), jnp.float32),
        "lead_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32),
        "time_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32),
        "targets": jax.ShapeDtypeStruct((batch, length), jnp.int32),
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def loss(params, rest, data, rng):
        return masked_lm.masked_lm_loss(nnx.merge(graphdef, params, rest), data, rng, ratio)[0]

    return config, encoder, loss, (params, rest, data, rng)


def flops(loss, args) -> float:
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), allow_int=True))
    cost = grad.trace(*args).lower().cost_analysis()
    return float(cost["flops"])


def saved_activations(loss, args) -> tuple[int, list[tuple[str, int, int]]]:
    """Bytes of the vjp residuals that are not inputs, and the largest (shape, count, bytes) groups."""
    params, rest, data, rng = args

    def forward(params, rest, data, rng):
        # Every input of the merged model is a primal (nnx wants its variables from one trace level).
        _, vjp = jax.vjp(lambda p, r: loss(p, r, data, rng), params, rest)
        return vjp

    closed = jax.make_jaxpr(forward)(params, rest, data, rng)
    jaxpr = closed.jaxpr
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    total = 0
    seen = set()
    for var in jaxpr.outvars:
        if isinstance(var, jax.extend.core.Literal) or var in inputs or var in seen:
            continue
        seen.add(var)
        aval = var.aval
        size = math.prod(aval.shape) * np.dtype(aval.dtype).itemsize if hasattr(aval, "shape") else 0
        total += size
        key = f"{aval.dtype}{list(aval.shape)}"
        groups[key][0] += 1
        groups[key][1] += size
    top = sorted(((k, c, b) for k, (c, b) in groups.items()), key=lambda g: -g[2])
    return total, top


_CALL = re.compile(r'(?:custom_call_target|call_target_name)\s*=\s*"([^"]+)"|custom_call @(\w+)')


def attention_calls(loss, args, platform: str, encoder) -> str:
    """The custom calls (fused kernels) the loss-and-gradient program lowers to, and whether it
    holds a [B, N, L, L] score tensor or a [B, 1, L, L] bias (or its gradient); or why it cannot."""
    try:
        text = (
            jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))
            .trace(*args)
            .lower(lowering_platforms=(platform,))
            .as_text()
        )
    except Exception as error:  # report any refusal as the platform's answer
        return f"cannot lower here: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    found = {a or b for a, b in _CALL.findall(text)}
    calls = sorted(name for name in found if "Sharding" not in name and "SPMD" not in name)
    batch = args[2]["lead_ids"].shape[0]
    length = encoder.max_len + int(encoder.position == "learned")
    scores = sorted(set(re.findall(rf"tensor<{batch}x{encoder.num_heads}x{length}x{length}x(\w+)>", text)))
    bias = sorted(set(re.findall(rf"tensor<{batch}x1x{length}x{length}x(\w+)>", text)))
    return f"custom calls {calls or 'none'}; [B,N,L,L] scores {scores or 'none'}; [B,1,L,L] bias {bias or 'none'}"


def real_fraction(
    tfds_dir: str, max_len: int, batch: int, step: int, window: int, seed: int
) -> tuple[float, float, float]:
    """Fraction of computed encoder positions that are real words on the train split, the same
    for the LM head's rows, and the mean row length: one sentence per row of max_len, or the
    config's length buckets (heartlang_jax/packing.py) over 64 global batches of the stream."""
    source = input_pipeline.load_builder(tfds_dir).as_data_source()["train"]
    lengths = packing.real_lengths(source)
    if step <= 0:
        masked = np.round(0.5 * lengths)
        head = masked.sum() / (len(lengths) * math.ceil(0.5 * max_len))
        return lengths.sum() / (len(lengths) * max_len), head, float(max_len)
    order = packing.LengthGroupedOrder(
        np.arange(len(lengths)), lengths, seed=seed, global_batch=batch, window=window, step=step, max_len=max_len
    )
    return packing.bucketed_fraction(order, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="heartlang_jax/configs/pretrain_base.py")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attention", default="cudnn", help="the attention_implementation to trace (cudnn: a GPU)")
    parser.add_argument("--vocab", type=int, default=RELEASED_VOCAB)
    parser.add_argument("--remat", default="", help="override model.encoder.remat_policy (none, lean, dots, full)")
    parser.add_argument("--tfds_dir", default="/tmp/i19data/tfds", help="a built dataset ('' to skip)")
    args = parser.parse_args()
    jax.nn.dot_product_attention = _standin_attention  # type: ignore[assignment]  # see the docstring
    try:
        config, encoder, loss, abstract = build(
            args.config, args.batch, args.dtype, args.attention, args.vocab, False, args.remat
        )
        print(
            f"config={args.config} layers={encoder.num_layers} hidden={encoder.hidden_dim} batch={args.batch} "
            f"dtype={args.dtype} attention={args.attention} remat={getattr(encoder, 'remat_policy', 'none')}"
        )
        total, top = saved_activations(loss, abstract)
        print(f"saved_activations={total / GIB:.2f} GiB (vjp residuals less parameters and inputs)")
        for key, count, size in top[:8]:
            print(f"  {size / GIB:7.3f} GiB  {count} x {key}")
        _, _, loss_u, abstract_u = build(
            args.config, args.batch, args.dtype, args.attention, args.vocab, True, args.remat
        )
        print(f"flops={flops(loss_u, abstract_u):.4e} per step (loss and gradient, layers unrolled)")
    finally:
        jax.nn.dot_product_attention = _real_attention  # type: ignore[assignment]
    if args.tfds_dir:
        step, window = config.length_bucket_step, config.length_bucket_window
        enc, head, mean_len = real_fraction(args.tfds_dir, encoder.max_len, args.batch, step, window, config.seed)
        print(
            f"real_positions={enc:.3f} of encoder positions, {head:.3f} of LM-head positions (train split; "
            f"length_bucket_step={step}, window={window}, mean row length {mean_len:.0f} of {encoder.max_len})"
        )
        if step > 0:
            jax.nn.dot_product_attention = _standin_attention  # type: ignore[assignment]
            try:
                length = round(mean_len)
                _, _, loss_m, abstract_m = build(
                    args.config, args.batch, args.dtype, args.attention, args.vocab, True, args.remat, length
                )
                print(f"flops_at_mean_bucket={flops(loss_m, abstract_m):.4e} per step (rows of {length} words)")
            finally:
                jax.nn.dot_product_attention = _real_attention  # type: ignore[assignment]
    splash.INTERPRET = False  # lower the TPU kernel itself, not its interpreter
    for platform, implementation in ATTENTION_ON.items():
        _, enc_p, loss_p, abstract_p = build(args.config, 2, args.dtype, implementation, args.vocab, False)
        print(f"attention[{platform}, {implementation}]: {attention_calls(loss_p, abstract_p, platform, enc_p)}")


if __name__ == "__main__":
    main()
