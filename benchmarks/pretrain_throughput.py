"""Pre-training step throughput: samples/s, ms/step, parameters and model FLOPs utilization.

Times the real jitted pre-training step of `heartlang_jax.stages.pretrain` (same model, loss,
optimizer and masking) after compilation, on whatever backend JAX finds, with synthetic batches
shaped like PTB-XL sentences (about 12 leads x 12 beats real words, the rest padding).

    python benchmarks/pretrain_throughput.py --config=heartlang_jax/configs/pretrain_base.py --batch=256 --steps=20 \
        --peak_tflops=790
    python benchmarks/pretrain_throughput.py --shape=released_base --batch=16 --steps=5   # CPU target

The last line is `samples_per_s=<x> step_ms=<y> params=<n> mfu=<m>`; MFU counts the model's
matmul FLOPs (forward + backward = 3x forward), not recomputation or elementwise work.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax import optim, parallel
from heartlang_jax.models import num_mask_positions
from heartlang_jax.stages import common, pretrain

# The released PyTorch code's base model (SPEC §3): 12 layers, 8 heads of 64, MLP 1024, learned
# positions + CLS, vocabulary 8192.
RELEASED_BASE = dict(num_layers=12, hidden_dim=768, mlp_dim=1024, num_heads=8, head_dim=64, position="learned")
RELEASED_VOCAB = 8192
REAL_WORDS = 144  # 12 leads x ~12 beats in 10 s


def load_config(path: str):
    path, _, variant = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def model_flops_per_sample(enc, vocab: int, max_len: int, masked: int, token_len: int = 96) -> float:
    """Forward matmul FLOPs of one sentence (2 per multiply-add), times 3 for forward + backward."""
    length = max_len + (1 if enc.position == "learned" else 0)
    inner = enc.num_heads * enc.head_dim
    per_layer = (
        2 * length * enc.hidden_dim * 3 * inner  # Q, K, V projections
        + 2 * length * inner * enc.hidden_dim  # output projection
        + 2 * 2 * length * length * inner  # QK^T and attention x V
        + 2 * 2 * length * enc.hidden_dim * enc.mlp_dim  # MLP
    )
    embed = 2 * max_len * 3 * token_len * enc.hidden_dim  # kernel-3 conv token embedding
    head = 2 * masked * enc.hidden_dim * vocab  # LM head on masked words only
    return 3.0 * (enc.num_layers * per_layer + embed + head)


def synthetic_batch(batch: int, max_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = np.arange(max_len) < REAL_WORDS
    return {
        "words": (rng.standard_normal((batch, max_len, 96)) * real[:, None]).astype(np.float32),
        "lead_ids": np.where(real, np.arange(max_len) // 12 % 12 + 1, 0).astype(np.int32)[None].repeat(batch, 0),
        "time_ids": np.where(real, np.arange(max_len) % 10 + 1, 0).astype(np.int32)[None].repeat(batch, 0),
        "targets": rng.integers(0, vocab, (batch, max_len)).astype(np.int32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", default="heartlang_jax/configs/pretrain_base.py", help="pre-training config file[:variant]"
    )
    parser.add_argument("--batch", type=int, default=256, help="global batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    parser.add_argument("--shape", choices=("config", "released_base"), default="config")
    parser.add_argument("--dtype", default=None, help="compute dtype override (float32, bfloat16)")
    parser.add_argument("--vocab", type=int, default=RELEASED_VOCAB, help="codebook size (VQ-HBR num_codes)")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="device peak for MFU (0: skip MFU)")
    args = parser.parse_args()

    config = load_config(args.config)
    if args.shape == "released_base":
        config.model.encoder.update(RELEASED_BASE)
    if args.dtype:
        config.dtype = args.dtype
    mesh = parallel.make_mesh()
    if args.batch % jax.device_count():
        raise SystemExit(f"--batch={args.batch} must be divisible by the {jax.device_count()} devices")
    enc = common.ecgformer_config(config.model.encoder, common.compute_dtype(config))
    model = pretrain.build_model(config, args.vocab)
    params = common.parameter_count(model)
    tx = optim.make_optimizer(config.optimizer, num_train_steps=1000, warmup_steps=10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    train_step = pretrain.make_train_step(config.model.mask_ratio)
    batches = [parallel.shard_batch(synthetic_batch(args.batch, enc.max_len, args.vocab, s), mesh) for s in range(2)]

    print(f"backend={jax.default_backend()} devices={jax.device_count()} ({jax.devices()[0].device_kind})")
    print(f"encoder={enc}")
    start = time.perf_counter()
    jax.block_until_ready(train_step(model, optimizer, batches[0], jax.random.key(0)))
    print(f"compile_and_first_step_s={time.perf_counter() - start:.1f}")
    jax.block_until_ready(train_step(model, optimizer, batches[1], jax.random.key(1)))  # warm caches
    start = time.perf_counter()
    for step in range(args.steps):
        metrics = train_step(model, optimizer, batches[step % 2], jax.random.key(step + 2))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.steps
    if not np.isfinite(float(metrics["loss"])):
        raise SystemExit("the benchmarked step produced a non-finite loss")

    masked = num_mask_positions(enc.max_len, config.model.mask_ratio)
    flops = model_flops_per_sample(enc, args.vocab, enc.max_len, masked) * args.batch
    achieved_tflops = flops / seconds / 1e12
    mfu = achieved_tflops / args.peak_tflops if args.peak_tflops > 0 else float("nan")
    print(
        f"model_tflops_per_step={flops / 1e12:.3f} achieved_tflops={achieved_tflops:.2f} peak_tflops={args.peak_tflops}"
    )
    print(f"samples_per_s={args.batch / seconds:.3f} step_ms={seconds * 1e3:.1f} params={params} mfu={mfu:.3f}")


if __name__ == "__main__":
    main()
