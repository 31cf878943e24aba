"""Pre-training step throughput: samples/s, ms/step, parameters and model FLOPs utilization.

Times the real jitted pre-training step of `heartlang_jax.stages.pretrain` (same model, loss,
optimizer and masking) after compilation, on whatever backend JAX finds, with synthetic batches
shaped like PTB-XL sentences (about 12 leads x 12 beats real words, the rest padding).

    python benchmarks/pretrain_throughput.py --config=heartlang_jax/configs/pretrain_base.py --batch=256 --steps=20 \
        --peak_tflops=790
    python benchmarks/pretrain_throughput.py --shape=released_base --batch=16 --steps=5   # CPU target

The last line is `samples_per_s=<x> step_ms=<y> params=<n> mfu=<m>`; MFU counts the model's
matmul FLOPs (forward + backward = 3x forward), not recomputation or elementwise work, over all
`max_len` positions of every sentence, padding included. `--real_words_from=<tfds dir>` (a built
ptbxl/leads12, e.g. the bundled sample's) also prints `mfu_real_words=<m>`: the FLOPs of the real
words only, each sentence of that dataset's train split counted at its own length (attention
quadratic in it) with half its words masked, averaged.

With `--compare_released` it first times the released PyTorch step (`released_throughput.py`, in a
subprocess of `--torch_python`, once per `--released_precisions`, at the same batch and steps,
before JAX takes the device), then ours as above, and ends with the side-by-side figures and
`<device> | pretrain base bf16 batch 256 | mfu=0.43 | vs_released=2.7x`, where vs_released is
our samples/s over the fastest released precision measured (issue 12):

    python benchmarks/pretrain_throughput.py --batch=256 --steps=20 --peak_tflops=790 --compare_released \
        --torch_python=python3
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax.configs import schema
from heartlang_jax.models import num_mask_positions
from heartlang_jax.models.ecgformer import RELEASED_BLOCK
from heartlang_jax.stages import common, pretrain
from heartlang_jax.training import optim, parallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from device_stats import peak_memory
from synthetic import synthetic_batch  # compile_time.py imports it from here

# The released PyTorch code's base model (SPEC §3): 12 layers, 8 heads of 64, MLP 1024, learned
# positions + CLS, vocabulary 8192.
RELEASED_BASE = dict(
    num_layers=12, hidden_dim=768, mlp_dim=1024, num_heads=8, head_dim=64, position="learned", **RELEASED_BLOCK
)
RELEASED_VOCAB = 8192
SHORT_DTYPES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


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


def real_word_flops_per_sample(enc, vocab: int, num_words: np.ndarray, mask_ratio: float) -> float:
    """`model_flops_per_sample` of sentences cut to their real words, averaged over `num_words`."""
    flops = [model_flops_per_sample(enc, vocab, int(n), round(mask_ratio * int(n)), enc.token_len) for n in num_words]
    return float(np.mean(flops))


def train_num_words(tfds_dir: str) -> np.ndarray:
    """Real words of every sentence of a built ptbxl/leads12 train split (e.g. the bundled sample's)."""
    from heartlang_jax.data import input_pipeline

    source = input_pipeline.load_builder(tfds_dir).as_data_source()["train"]
    return np.array([int(source[i]["num_words"]) for i in range(len(source))])


def parse_args() -> argparse.Namespace:
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
    parser.add_argument(
        "--real_words_from", default="", help="tfds dir of a built ptbxl/leads12: also print the real-word MFU"
    )
    parser.add_argument(
        "--compare_released",
        action="store_true",
        help="also time the released PyTorch step (benchmarks/released_throughput.py) at the same batch and steps",
    )
    parser.add_argument(
        "--from_pipeline",
        action="store_true",
        help="also time the step fed by the real input pipeline and loop prefetch (bundled PTB-XL sample)",
    )
    parser.add_argument(
        "--tfds_dir", default="", help="--from_pipeline: TFDS dir of the bundled sample (built there if missing)"
    )
    parser.add_argument("--torch_python", default=sys.executable, help="interpreter with torch for the released step")
    parser.add_argument(
        "--released_precisions", default="amp,bf16", help="comma-separated released_throughput.py --precision values"
    )
    return parser.parse_args()


def run_released(args: argparse.Namespace) -> dict[str, float]:
    """Released samples/s per precision, each in its own subprocess (before JAX takes the device)."""
    figures = {}
    for precision in args.released_precisions.split(","):
        command = [args.torch_python, str(pathlib.Path(__file__).with_name("released_throughput.py"))]
        command += [f"--precision={precision}", f"--batch={args.batch}", f"--steps={args.steps}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        print(result.stdout, end="", flush=True)
        fields = dict(item.split("=", 1) for item in result.stdout.strip().splitlines()[-1].split()[1:])
        figures[precision] = float(fields["samples_per_s"])
    return figures


def measure(args: argparse.Namespace, config) -> dict:
    """Our jitted pre-training step, as this benchmark has always timed it."""

    if args.shape == "released_base":
        config.model.encoder.update(RELEASED_BASE)
    if args.dtype:
        config.dtype = args.dtype
    mesh = parallel.make_mesh()
    if args.batch % jax.device_count():
        raise SystemExit(f"--batch={args.batch} must be divisible by the {jax.device_count()} devices")
    enc = common.ecgformer_config(schema.validate(config).model.encoder, common.compute_dtype(config))
    model = pretrain.build_model(schema.validate(config), args.vocab)
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

    if args.from_pipeline:
        time_from_pipeline(args, model, optimizer, train_step, mesh, seconds)

    masked = num_mask_positions(enc.max_len, config.model.mask_ratio)
    flops = model_flops_per_sample(enc, args.vocab, enc.max_len, masked) * args.batch
    achieved_tflops = flops / seconds / 1e12
    mfu = achieved_tflops / args.peak_tflops if args.peak_tflops > 0 else float("nan")
    print(
        f"model_tflops_per_step={flops / 1e12:.3f} achieved_tflops={achieved_tflops:.2f} peak_tflops={args.peak_tflops}"
    )
    mfu_real = float("nan")
    if args.real_words_from:
        num_words = train_num_words(args.real_words_from)
        real_flops = real_word_flops_per_sample(enc, args.vocab, num_words, config.model.mask_ratio) * args.batch
        if args.peak_tflops > 0:
            mfu_real = real_flops / seconds / 1e12 / args.peak_tflops
        print(
            f"real_words: {len(num_words)} train sentences, mean {num_words.mean():.1f} of {enc.max_len} words "
            f"(fraction {num_words.mean() / enc.max_len:.3f}); model_tflops_per_step={real_flops / 1e12:.3f} "
            f"mfu_real_words={mfu_real:.3f}"
        )
    print(f"peak_device_memory={peak_memory()}")
    print(f"samples_per_s={args.batch / seconds:.3f} step_ms={seconds * 1e3:.1f} params={params} mfu={mfu:.3f}")
    return dict(samples_per_s=args.batch / seconds, step_ms=seconds * 1e3, mfu=mfu, mfu_real=mfu_real, dtype=enc.dtype)


def time_from_pipeline(args, model, optimizer, train_step, mesh, resident_seconds: float) -> None:
    """The same step fed as `train_loop.run` feeds it: the bundled sample's training split from
    its column cache, shuffled global batches, targets looked up per batch, and the device
    prefetch thread; timed in rounds alternating with the device-resident batches."""
    import os
    import tempfile

    from heartlang_jax.data import input_pipeline, split_cache

    tfds_dir = args.tfds_dir or os.path.join(tempfile.gettempdir(), "heartlang_bench_tfds")
    builder = input_pipeline.prepare_dataset(tfds_dir, manual_dir=input_pipeline.BUNDLED, num_workers=2)
    source = split_cache.ColumnSource.of(builder, "train")
    source.columns()
    targets = np.random.default_rng(0).integers(0, args.vocab, (len(source), 256), dtype=np.int32)

    def prepare(batch):
        batch["targets"] = targets[batch["index"]]
        return batch

    dataset = input_pipeline.train_dataset(source, global_batch=args.batch, seed=0)
    batches = input_pipeline.DevicePrefetcher(input_pipeline.train_iterator(dataset), mesh, prepare)
    resident = [parallel.shard_batch(synthetic_batch(args.batch, 256, args.vocab, s), mesh) for s in range(2)]
    rounds, per_round = 3, max(args.steps // 3, 1)
    fed = again = 0.0
    try:
        jax.block_until_ready(train_step(model, optimizer, next(batches), jax.random.key(0)))  # compiles (f16 words)
        # Interleaved rounds, so that a shared machine's changing load falls on both alike.
        for _ in range(rounds):
            start = time.perf_counter()
            for step in range(per_round):
                metrics = train_step(model, optimizer, next(batches), jax.random.key(step + 2))
            jax.block_until_ready(metrics)
            fed += time.perf_counter() - start
            start = time.perf_counter()
            for step in range(per_round):
                metrics = train_step(model, optimizer, resident[step % 2], jax.random.key(step + 2))
            jax.block_until_ready(metrics)
            again += time.perf_counter() - start
    finally:
        batches.close()
    fed, again = fed / (rounds * per_round), again / (rounds * per_round)
    print(
        f"from_pipeline step_ms={fed * 1e3:.1f} device_resident step_ms={again * 1e3:.1f} "
        f"(same rounds; first timing above {resident_seconds * 1e3:.1f}) overhead={100 * (fed / again - 1):+.1f}% "
        f"loadavg={os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    released = run_released(args) if args.compare_released else {}
    ours = measure(args, config)
    if not released:
        return
    device = jax.devices()[0].device_kind.removeprefix("NVIDIA ")
    name = pathlib.Path(args.config.partition(":")[0]).stem.replace("_", " ")
    if args.shape != "config":
        name += f" ({args.shape})"
    print(f"side_by_side batch={args.batch} steps={args.steps} device={device}")
    print(f"  ours {ours['dtype']}: samples_per_s={ours['samples_per_s']:.3f} step_ms={ours['step_ms']:.1f}")
    for precision, samples_per_s in released.items():
        ratio = ours["samples_per_s"] / samples_per_s
        print(f"  released {precision}: samples_per_s={samples_per_s:.3f} ours/released={ratio:.2f}x")
    # Conservative: against the fastest released precision measured.
    ratio = ours["samples_per_s"] / max(released.values())
    print(f"  ours mfu={ours['mfu']:.3f} (all {args.batch} x max_len positions) mfu_real_words={ours['mfu_real']:.3f}")
    dtype = SHORT_DTYPES.get(ours["dtype"], ours["dtype"])
    print(f"{device} | {name} {dtype} batch {args.batch} | mfu={ours['mfu']:.2f} | vs_released={ratio:.1f}x")


if __name__ == "__main__":
    main()
