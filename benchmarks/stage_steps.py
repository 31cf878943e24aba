"""Training steps of the other stages: samples/s, ms/step and device memory, and the largest
pre-training batch that fits (issue 20).

Times the real jitted steps of `heartlang_jax.stages` after compilation, on whatever backend JAX
finds, with synthetic PTB-XL-shaped batches already on the device (`synthetic.py`):

- `vqhbr`: `stages.vqhbr.train_step` at the released size (`configs/vqhbr.py`: encoder 4 layers,
  decoder 2, D=768, K=8192 words of d=128), EMA codebook update included;
- `linear_probe`: what a linear-probing run does on the device: the frozen encoder's features once
  (`stages.finetune._features`, eval mode), then `linear_train_step` on them (the head only);
- `finetune`: `stages.finetune.full_train_step` (every parameter, layer decay 0.9);
- `pretrain`: `stages.pretrain.make_train_step` (also `pretrain_throughput.py`).

The classifiers use the paper's Base encoder (`--size`) and 5 classes (superdiagnostic). Each step
prints `stage=<s> batch=<b> samples_per_s=<x> step_ms=<y> step_memory=<XLA's account of one call>
peak_device_memory=<allocator peak so far in this process, "n/a" on CPU>`.

    python benchmarks/stage_steps.py --stages=vqhbr,linear_probe,finetune --batch=256 --steps=20
    python benchmarks/stage_steps.py --max_batch=base --time_cap_s=60   # doubling search, pre-training
    python benchmarks/stage_steps.py --tiny --batch=4 --steps=2         # CPU check at tiny sizes

`--max_batch=<size>` doubles the pre-training batch from `--batch` until a step does not fit (XLA's
compiled memory over the device's limit, or an out-of-memory error when run) or `--time_cap_s`
runs out, and ends with `max_batch size=<s> fits=<b> fails=<2b | not reached (time cap)>`. On a
GPU, JAX preallocates 75% of the memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax.configs import common as config_common
from heartlang_jax.configs import finetune as finetune_config
from heartlang_jax.configs import pretrain_common, schema
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.stages import common, finetune, pretrain, vqhbr
from heartlang_jax.training import optim, parallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from device_stats import compiled_memory, peak_memory
from synthetic import synthetic_batch

STAGES = ("vqhbr", "linear_probe", "finetune", "pretrain")
NUM_CLASSES = 5  # PTB-XL superdiagnostic
VOCAB = 8192  # the released vocabulary (VQ-HBR num_codes)


@dataclasses.dataclass
class Step:
    """One jitted step `fn(model, optimizer, batch, rng)` and what it runs on."""

    name: str
    fn: Callable
    model: nnx.Module
    optimizer: nnx.Optimizer | None
    make_batch: Callable[[int, int], dict]  # (batch, seed) -> host batch
    params: int


def _optimizer(model, opt_cfg, wrt=nnx.Param, lr_scales=None) -> nnx.Optimizer:
    tx = optim.make_optimizer(opt_cfg, num_train_steps=1000, warmup_steps=10, lr_scales=lr_scales)
    return nnx.Optimizer(model, tx, wrt=wrt)


def _words_batch(max_len: int, vocab: int) -> Callable[[int, int], dict]:
    return lambda batch, seed: synthetic_batch(batch, max_len, vocab, seed)


def _labelled(max_len: int) -> Callable[[int, int], dict]:
    def make(batch: int, seed: int) -> dict:
        data = synthetic_batch(batch, max_len, VOCAB, seed)
        del data["targets"]
        data["labels"] = np.random.default_rng(seed).integers(0, 2, (batch, NUM_CLASSES)).astype(np.float32)
        return data

    return make


def vqhbr_step(tiny: bool) -> Step:
    config = schema.validate(vqhbr_config.get_config("tiny" if tiny else ""))
    model = vqhbr.build_model(config)
    max_len = model.config.encoder.max_len
    return Step(
        "vqhbr",
        vqhbr.train_step,
        model,
        _optimizer(model, config.optimizer),
        _words_batch(max_len, model.config.num_codes),
        common.parameter_count(model),
    )


def classifier(size: str, tiny: bool, mode: str):
    config = finetune_config.get_config("tiny" if tiny else "")
    config.encoder = config_common.encoder_config("tiny" if tiny else size)
    config.mode = mode
    config = schema.validate(config)
    return config, finetune.build_model(config, NUM_CLASSES)


def finetune_step(size: str, tiny: bool) -> Step:
    config, model = classifier(size, tiny, "full")
    opt_cfg = config.optimizer.full
    scales = optim.layer_decay_scales(model, opt_cfg.layer_decay) if opt_cfg.layer_decay < 1.0 else None
    return Step(
        "finetune",
        finetune.full_train_step,
        model,
        _optimizer(model, opt_cfg, lr_scales=scales),
        _labelled(model.encoder.config.max_len),
        common.parameter_count(model),
    )


def linear_probe_steps(size: str, tiny: bool) -> list[Step]:
    """The frozen encoder's features (once per run, eval mode), then the head's step on them."""
    config, model = classifier(size, tiny, "linear")
    model.eval()
    max_len, hidden = model.encoder.config.max_len, model.encoder.config.hidden_dim

    def features(model, optimizer, batch, rng):
        del optimizer, rng
        return {"features": finetune._features(model, batch)}

    def features_batch(batch: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {
            "features": rng.standard_normal((batch, hidden)).astype(np.float32),
            "labels": rng.integers(0, 2, (batch, NUM_CLASSES)).astype(np.float32),
        }

    params = common.parameter_count(model)
    head_optimizer = _optimizer(model, config.optimizer.linear, wrt=finetune.HEAD)
    return [
        Step("linear_probe_features", features, model, None, _labelled(max_len), params),
        Step("linear_probe_head", finetune.linear_train_step, model, head_optimizer, features_batch, params),
    ]


def pretrain_step(size: str, tiny: bool) -> Step:
    config = schema.validate(pretrain_common.get_pretrain_config(size, "tiny" if tiny else ""))
    model = pretrain.build_model(config, VOCAB)
    return Step(
        "pretrain",
        pretrain.make_train_step(config.model.mask_ratio),
        model,
        _optimizer(model, config.optimizer),
        _words_batch(model.encoder.config.max_len, VOCAB),
        common.parameter_count(model),
    )


def compile_step(step: Step, batches: list[dict]):
    """(compiled step, seconds to lower and compile)."""
    start = time.perf_counter()
    if step.optimizer is None:  # a plain function of jitted pieces: nothing to lower as a whole
        return step.fn, 0.0
    compiled = step.fn.lower(step.model, step.optimizer, batches[0], jax.random.key(0)).compile()
    return compiled, time.perf_counter() - start


def time_step(step: Step, batch: int, steps: int, mesh) -> dict:
    batches = [parallel.shard_batch(step.make_batch(batch, seed), mesh) for seed in range(2)]
    compiled, compile_s = compile_step(step, batches)
    memory = compiled_memory(compiled) if step.optimizer is not None else "n/a (several jitted calls)"
    start = time.perf_counter()
    jax.block_until_ready(compiled(step.model, step.optimizer, batches[0], jax.random.key(0)))
    first_s = time.perf_counter() - start
    jax.block_until_ready(compiled(step.model, step.optimizer, batches[1], jax.random.key(1)))  # warm
    start = time.perf_counter()
    for i in range(steps):
        out = compiled(step.model, step.optimizer, batches[i % 2], jax.random.key(i + 2))
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / steps
    finite = all(bool(np.all(np.isfinite(np.asarray(v)))) for k, v in out.items() if k in ("loss", "features"))
    if not finite:
        raise SystemExit(f"stage {step.name}: the benchmarked step produced non-finite values")
    print(
        f"stage={step.name} batch={batch} samples_per_s={batch / seconds:.1f} step_ms={seconds * 1e3:.2f} "
        f"params={step.params} compile_s={compile_s:.1f} first_step_s={first_s:.2f} step_memory={memory} "
        f"peak_device_memory={peak_memory()}",
        flush=True,
    )
    return dict(samples_per_s=batch / seconds, step_ms=seconds * 1e3)


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def max_batch(size: str, tiny: bool, start_batch: int, time_cap_s: float, mesh) -> None:
    """Doubles the pre-training batch until it does not fit or the time cap is spent."""
    deadline = time.monotonic() + time_cap_s
    step = pretrain_step(size, tiny)
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    print(
        f"max_batch search: pretrain {size}{' (tiny)' if tiny else ''}, params={step.params}, device limit "
        f"{'n/a' if limit is None else f'{limit / 2**30:.1f}GiB'}, time cap {time_cap_s:.0f}s",
        flush=True,
    )
    fits, fails, batch = None, None, start_batch
    while time.monotonic() < deadline:
        try:
            batches = [parallel.shard_batch(step.make_batch(batch, seed), mesh) for seed in range(2)]
            compiled, _ = compile_step(step, batches)
            analysis = compiled.memory_analysis()
            needs = None
            if analysis is not None:
                needs = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                needs += analysis.temp_size_in_bytes - analysis.alias_size_in_bytes
            if limit is not None and needs is not None and needs > limit:
                print(f"  batch {batch}: does not fit (XLA needs {needs / 2**30:.1f}GiB)", flush=True)
                fails = batch
                break
            start = time.perf_counter()
            for i in range(2):
                jax.block_until_ready(compiled(step.model, step.optimizer, batches[i], jax.random.key(i)))
            print(
                f"  batch {batch}: fits, step_memory={compiled_memory(compiled)} "
                f"samples_per_s={2 * batch / (time.perf_counter() - start):.1f} peak_device_memory={peak_memory()}",
                flush=True,
            )
            fits = batch
            del batches, compiled
        except jax.errors.JaxRuntimeError as error:
            if not _out_of_memory(error):
                raise
            print(f"  batch {batch}: out of memory ({str(error).splitlines()[0][:160]})", flush=True)
            fails = batch
            break
        batch *= 2
    print(f"max_batch size={size} fits={fits} fails={fails if fails else 'not reached (time cap)'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="vqhbr,linear_probe,finetune", help=f"comma-separated of {STAGES}")
    parser.add_argument("--batch", type=int, default=256, help="global batch (the search's first batch)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after compilation and one warm step")
    parser.add_argument("--size", default="base", help="encoder size of the classifiers and of pretrain")
    parser.add_argument("--tiny", action="store_true", help="the configs' :tiny sizes (a CPU check)")
    parser.add_argument("--max_batch", default="", help="a pre-training size: search its largest batch instead")
    parser.add_argument("--time_cap_s", type=float, default=60.0, help="time cap of the --max_batch search")
    args = parser.parse_args()

    mesh = parallel.make_mesh()
    print(f"backend={jax.default_backend()} devices={jax.device_count()} ({jax.devices()[0].device_kind})", flush=True)
    if args.max_batch:
        max_batch(args.max_batch, args.tiny, args.batch, args.time_cap_s, mesh)
        return
    for name in args.stages.split(","):
        if name == "vqhbr":
            steps = [vqhbr_step(args.tiny)]
        elif name == "linear_probe":
            steps = linear_probe_steps(args.size, args.tiny)
        elif name == "finetune":
            steps = [finetune_step(args.size, args.tiny)]
        elif name == "pretrain":
            steps = [pretrain_step(args.size, args.tiny)]
        else:
            raise SystemExit(f"--stages: unknown stage {name!r}; known: {', '.join(STAGES)}")
        for step in steps:
            time_step(step, args.batch, args.steps, mesh)
            del step


if __name__ == "__main__":
    main()
