"""Profile of the pre-training step: the top ops by device time and the attention kernel (issue 20).

Runs `--steps` (5) pre-training steps of `--size` (the paper's Base) at `--batch` (256) after
compilation under `jax.profiler.trace(..., create_perfetto_trace=True)`, then reads the gzipped
trace JSON it writes (`plugins/profile/<run>/perfetto_trace.json.gz`) with plain json and prints
the `--top` (10) op names by total time on the device (the device's "XLA Ops" line where the
trace has one, else all its kernels; on CPU, which has no device lines, the host's XLA threads),
and which attention ran: cuDNN's fused (flash) attention, seen as a `__cudnn$fmha` custom call in
the compiled step and as its kernels in the trace, or XLA's own.

    python benchmarks/profile_step.py --batch=256 --steps=5 --logdir=/tmp/profile
    python benchmarks/profile_step.py --tiny --batch=4 --steps=2   # CPU check

`--copy_trace=<file>` also copies the trace file there (for Perfetto's UI, ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import shutil
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax.training import parallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from device_stats import peak_memory
from stage_steps import compile_step, pretrain_step

ATTENTION_KERNEL = re.compile(r"fmha|flash|sdpa|cudnn", re.IGNORECASE)


def find_trace(logdir: pathlib.Path) -> pathlib.Path:
    traces = sorted(logdir.glob("plugins/profile/*/perfetto_trace.json.gz")) or sorted(
        logdir.glob("plugins/profile/*/*.trace.json.gz")
    )
    if not traces:
        raise SystemExit(f"no trace JSON under {logdir}/plugins/profile")
    return traces[-1]


def device_op_times(trace_path: pathlib.Path) -> tuple[str, dict[str, float], list[str]]:
    """(which events were counted, {op name: total microseconds}, every device event name)."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[(event["pid"], event["tid"])] = event["args"]["name"]
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    devices = {pid for pid, name in processes.items() if re.search(r"/device:(GPU|TPU)", name)}
    device_events = [e for e in complete if e["pid"] in devices]
    op_lines = [e for e in device_events if threads.get((e["pid"], e["tid"]), "") == "XLA Ops"]
    if op_lines:
        counted, source = op_lines, "device 'XLA Ops' line"
    elif device_events:
        skip = ("XLA Modules", "Steps", "XLA TraceMe", "Source code")
        counted = [e for e in device_events if threads.get((e["pid"], e["tid"]), "") not in skip]
        source = "device kernels"
    else:  # CPU: no device lines; the host's XLA threads run the ops
        counted = [
            e
            for e in complete
            if threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA") and not e["name"].startswith("ThunkExecutor")
        ]
        source = "host XLA threads (no device in the trace)"
    totals: dict[str, float] = collections.defaultdict(float)
    for event in counted:
        totals[event["name"]] += float(event["dur"])
    return source, totals, sorted({e["name"] for e in device_events})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--tiny", action="store_true", help="the :tiny pre-training config (a CPU check)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--logdir", default="/tmp/heartlang_profile")
    parser.add_argument("--copy_trace", default="", help="also copy the trace JSON (.json.gz) to this file")
    args = parser.parse_args()

    mesh = parallel.make_mesh()
    step = pretrain_step(args.size, args.tiny)
    batches = [parallel.shard_batch(step.make_batch(args.batch, seed), mesh) for seed in range(2)]
    compiled, compile_s = compile_step(step, batches)
    hlo = compiled.as_text() or ""
    cudnn_calls = sorted(set(re.findall(r'custom_call_target="(__cudnn\$fmha[^"]*)"', hlo)))
    for i in range(2):  # compiled and warm before tracing
        jax.block_until_ready(compiled(step.model, step.optimizer, batches[i], jax.random.key(i)))
    logdir = pathlib.Path(args.logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    start = time.perf_counter()
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True):
        for i in range(args.steps):
            out = compiled(step.model, step.optimizer, batches[i % 2], jax.random.key(i + 2))
        jax.block_until_ready(out)
    traced_s = time.perf_counter() - start
    trace_path = find_trace(logdir)
    source, totals, device_names = device_op_times(trace_path)
    print(
        f"profile: pretrain {args.size}{' (tiny)' if args.tiny else ''} batch={args.batch} steps={args.steps} "
        f"backend={jax.default_backend()} ({jax.devices()[0].device_kind}) compile_s={compile_s:.1f} "
        f"traced_wall_s={traced_s:.2f} peak_device_memory={peak_memory()}"
    )
    print(f"trace={trace_path} ({trace_path.stat().st_size / 2**20:.1f} MiB); counted: {source}")
    total = sum(totals.values())
    print(f"top {args.top} ops by total time over {args.steps} steps (of {total / 1e3:.1f} ms counted):")
    for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {micros / 1e3:9.2f} ms  {100 * micros / max(total, 1e-9):5.1f}%  {name[:140]}")
    kernels = sorted({name for name in device_names if ATTENTION_KERNEL.search(name)})
    if cudnn_calls or kernels:
        print(f"attention: cuDNN fused attention (HLO custom calls {cudnn_calls or 'none'}; kernels {kernels[:4]})")
    else:
        print("attention: XLA (no __cudnn$fmha custom call in the compiled step, no cuDNN attention kernel traced)")
    if args.copy_trace:
        shutil.copyfile(trace_path, args.copy_trace)
        print(f"trace copied to {args.copy_trace}")


if __name__ == "__main__":
    main()
