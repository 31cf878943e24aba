"""Compile time of the pre-training step for the paper's Small, Base and Large (issue 12).

Builds the real jitted pre-training step of `heartlang_jax.stages.pretrain` for each size of
`PAPER_SIZES` and times, at batch 2 on whatever backend JAX finds: tracing and lowering, XLA
compilation, the first step (which also touches the freshly allocated gradient and optimizer
buffers) and a later step. With the Transformer blocks scanned (`nnx.scan`), the compiled
program holds one block whatever the depth, so compilation should not grow from Small (6 layers)
to Large (24); the steps themselves grow with the parameter count (30M -> 158M).

    python benchmarks/compile_time.py                    # small base large, batch 2
    python benchmarks/compile_time.py --sizes=small,large

The last line gives the Large/Small ratios of compile, lower+compile and compile + first step.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flax import nnx

from heartlang_jax.configs import pretrain_common, schema
from heartlang_jax.stages import common, pretrain
from heartlang_jax.training import optim, parallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pretrain_throughput import RELEASED_VOCAB, synthetic_batch


def time_size(size: str, batch: int, vocab: int) -> dict[str, float]:
    """Seconds to trace+lower, to compile (XLA), to run the first step and a later one."""
    config = pretrain_common.get_pretrain_config(size)
    mesh = parallel.make_mesh()
    enc = common.ecgformer_config(schema.validate(config).model.encoder, common.compute_dtype(config))
    model = pretrain.build_model(schema.validate(config), vocab)
    tx = optim.make_optimizer(config.optimizer, num_train_steps=1000, warmup_steps=10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    train_step = pretrain.make_train_step(config.model.mask_ratio)
    batches = [parallel.shard_batch(synthetic_batch(batch, enc.max_len, vocab, s), mesh) for s in range(2)]
    times = {"layers": enc.num_layers}
    start = time.perf_counter()
    lowered = train_step.lower(model, optimizer, batches[0], jax.random.key(0))
    times["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    times["compile_s"] = time.perf_counter() - start
    for name, index in (("first_step_s", 0), ("step_s", 1)):
        start = time.perf_counter()
        jax.block_until_ready(compiled(model, optimizer, batches[index], jax.random.key(index)))
        times[name] = time.perf_counter() - start
    times["total_s"] = times["lower_s"] + times["compile_s"] + times["first_step_s"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,base,large", help="comma-separated PAPER_SIZES names")
    parser.add_argument("--batch", type=int, default=2, help="global batch size")
    parser.add_argument("--vocab", type=int, default=RELEASED_VOCAB, help="codebook size")
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} devices={jax.device_count()} batch={args.batch}")
    results = {}
    for size in args.sizes.split(","):
        results[size] = t = time_size(size, args.batch, args.vocab)
        print(
            f"{size}: layers={t['layers']} lower_s={t['lower_s']:.1f} compile_s={t['compile_s']:.1f} "
            f"first_step_s={t['first_step_s']:.2f} step_s={t['step_s']:.2f} "
            f"compile_and_first_step_s={t['total_s']:.1f}",
            flush=True,
        )
    if "small" in results and "large" in results:
        small, large = results["small"], results["large"]
        print(
            f"large_over_small: compile={large['compile_s'] / small['compile_s']:.2f} "
            f"lower+compile={(large['lower_s'] + large['compile_s']) / (small['lower_s'] + small['compile_s']):.2f} "
            f"compile_and_first_step={large['total_s'] / small['total_s']:.2f}"
        )


if __name__ == "__main__":
    main()
