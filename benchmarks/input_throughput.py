"""Input pipeline throughput: samples/s the pre-training stage's pipeline delivers to the devices.

Times, in one run, the pipeline as the stages build it (`split_cache.ColumnSource` columns,
`input_pipeline.train_dataset` + `train_iterator`, the pre-training targets looked up per batch,
`DevicePrefetcher` copying float16 words and uint8 ids to the devices ahead of the step) against the pipeline as it was
before issue 18 (TFDS examples decoded one at a time and cast to float32 on the host, grain's
default read options, a synchronous `shard_batch`), on the same split, global batch and seed:

    python benchmarks/input_throughput.py --batch=256 --batches=60

Each pipeline is timed from the creation of its iterator: `first_batch_s` (until the first
batch is on the devices), `from_start` (samples/s over the first `--start_batches`, the start
included) and `steady` (samples/s over the next `--batches`). `cpu_s_per_sample` is the process's
CPU time (all threads) per sample, `bytes_per_batch` what one host sends to its devices per
batch. The column cache is built (and timed) before the new pipeline's clock starts; it is built
once per dataset version and split. The targets are random word ids of the right shape (the
lookup costs the same as the real ones). Host 0 of `--hosts` is timed too,
reading its own `--shards` host shards (`input_pipeline.host_shards`, as a run with
`train_shards` builds them; simulated by that host's rows of each global batch): the bytes it
caches against the whole split's, and its samples/s (before the old pipeline, whose grain threads keep
reading ahead). The last line is
`input_pipeline new_steady=<x> new_from_start=<y> old_steady=<z> ratio=<x/z> vs_3000=<x/3000> ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time

import grain
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from heartlang_jax.data import input_pipeline, split_cache
from heartlang_jax.training import parallel

TARGET = 3000.0  # samples/s one H200 needs at 40% MFU on Base (issue 18)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tfds_dir", default=os.path.join(tempfile.gettempdir(), "heartlang_bench_tfds"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--start_batches", type=int, default=10, help="batches timed from the start")
    parser.add_argument("--batches", type=int, default=60, help="batches timed after those (steady)")
    parser.add_argument("--old_batches", type=int, default=8, help="steady batches of the old pipeline (slow)")
    parser.add_argument("--shards", type=int, default=64, help="host shards of the sharded pipeline")
    parser.add_argument("--hosts", type=int, default=8, help="hosts sharing them (host 0 is timed)")
    return parser.parse_args()


@dataclasses.dataclass(frozen=True)
class _OldHostRows:
    """The pre-issue-18 batch assembly (input_pipeline._HostRows at 7643eeb): one decoded
    example at a time, words and ids cast to float32 / int32 on the host."""

    source: object
    rows: slice

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        fields = []
        for i in indices[self.rows]:
            example = self.source[int(i)]
            fields.append(
                {
                    "words": np.asarray(example["words"], np.float32),
                    "lead_ids": np.asarray(example["lead_ids"], np.int32),
                    "time_ids": np.asarray(example["time_ids"], np.int32),
                    "index": np.int32(i),
                }
            )
        return {key: np.stack([f[key] for f in fields]) for key in fields[0]}


def old_batches(source, global_batch: int, seed: int, mesh, targets: np.ndarray):
    """The old loop's input side: default grain read options, then prepare and a synchronous shard."""
    dataset = (
        grain.MapDataset.source(np.arange(len(source)))
        .shuffle(seed=seed)
        .repeat(None)
        .batch(global_batch, drop_remainder=True)
        .map(_OldHostRows(source, parallel.host_slice(global_batch)))
    )
    iterator = iter(dataset.to_iter_dataset())
    while True:
        batch = next(iterator)
        batch["targets"] = targets[batch["index"]]
        yield parallel.shard_batch(batch, mesh), _nbytes(batch)


def new_batches(source, global_batch: int, seed: int, mesh, targets: np.ndarray):
    """The pipeline as the stages build it, over a cached split or this host's `HostShards` of it."""

    def prepare(batch):
        batch["targets"] = targets[batch["index"]]
        return batch

    dataset = input_pipeline.train_dataset(source, global_batch=global_batch, seed=seed)
    nbytes = _nbytes(prepare(dataset[0]))  # what the prefetcher copies to the devices per batch
    prefetcher = input_pipeline.DevicePrefetcher(input_pipeline.train_iterator(dataset), mesh, prepare)
    try:
        while True:
            yield next(prefetcher), nbytes
    finally:
        prefetcher.close()


def _nbytes(batch: dict) -> int:
    return sum(np.asarray(v).nbytes for v in batch.values())


def time_pipeline(
    name: str, batches, global_batch: int, start_batches: int, steady_batches: int, host_rows: int | None = None
) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    device_batch, nbytes = next(batches)
    jax.block_until_ready(device_batch)
    first = time.perf_counter() - wall0
    for _ in range(start_batches - 1):
        jax.block_until_ready(next(batches)[0])
    wall1 = time.perf_counter()
    for _ in range(steady_batches):
        jax.block_until_ready(next(batches)[0])
    wall2, cpu2 = time.perf_counter(), time.process_time()
    batches.close()
    host_rows = host_rows or parallel.host_rows(global_batch)
    out = {
        "first_batch_s": first,
        "from_start": start_batches * host_rows / (wall1 - wall0),
        "steady": steady_batches * host_rows / (wall2 - wall1),
        "cpu_s_per_sample": (cpu2 - cpu0) / ((start_batches + steady_batches) * host_rows),
        "bytes_per_batch": nbytes,
    }
    print(
        f"{name}: first_batch_s={out['first_batch_s']:.3f} from_start={out['from_start']:.0f}/s "
        f"steady={out['steady']:.0f}/s cpu_ms_per_sample={out['cpu_s_per_sample'] * 1e3:.3f} "
        f"bytes_per_batch={out['bytes_per_batch']:,} (host rows {host_rows})",
        flush=True,
    )
    return out


def main() -> None:
    args = parse_args()
    builder = input_pipeline.prepare_dataset(args.tfds_dir, manual_dir=input_pipeline.BUNDLED, num_workers=2)
    tfds_source = builder.as_data_source()[args.split]
    mesh = parallel.make_mesh()
    load = os.getloadavg()
    print(
        f"backend={jax.default_backend()} devices={jax.device_count()} cpus={os.cpu_count()} "
        f"loadavg={load[0]:.2f},{load[1]:.2f},{load[2]:.2f} split={args.split} examples={len(tfds_source)} "
        f"global_batch={args.batch}",
        flush=True,
    )
    targets = np.random.default_rng(0).integers(0, 8192, (len(tfds_source), 256), dtype=np.int32)

    cached = split_cache.ColumnSource.of(builder, args.split, tfds_source)
    start = time.perf_counter()
    cached.columns()
    print(f"column cache ready in {time.perf_counter() - start:.2f} s at {cached.directory}", flush=True)

    new = time_pipeline(
        "new", new_batches(cached, args.batch, 0, mesh, targets), args.batch, args.start_batches, args.batches
    )
    rows = slice(0, args.batch // args.hosts)
    sharded = input_pipeline.host_shards(cached, args.shards, args.batch, rows)
    start = time.perf_counter()
    sharded.source.columns()
    whole_bytes, host_bytes = input_pipeline.cached_bytes(cached), input_pipeline.cached_bytes(sharded.source)
    print(
        f"host 0 of {args.hosts}: shards {sharded.owned.start}..{sharded.owned.stop - 1} of {args.shards} cached in "
        f"{time.perf_counter() - start:.2f} s, {host_bytes:,} bytes of the split's {whole_bytes:,} "
        f"({host_bytes / whole_bytes:.3f})",
        flush=True,
    )
    shard = time_pipeline(
        "sharded",
        new_batches(sharded, args.batch, 0, mesh, targets),
        args.batch,
        args.start_batches,
        args.batches,
        host_rows=rows.stop - rows.start,
    )
    old_start = min(args.start_batches, 3)
    old = time_pipeline(
        "old", old_batches(tfds_source, args.batch, 0, mesh, targets), args.batch, old_start, args.old_batches
    )
    print(
        f"input_pipeline new_steady={new['steady']:.0f} new_from_start={new['from_start']:.0f} "
        f"new_first_batch_s={new['first_batch_s']:.3f} old_steady={old['steady']:.0f} "
        f"old_from_start={old['from_start']:.0f} ratio={new['steady'] / old['steady']:.1f}x "
        f"vs_3000={new['steady'] / TARGET:.2f} from_start_vs_3000={new['from_start'] / TARGET:.2f} "
        f"sharded_host_steady={shard['steady']:.0f} sharded_host_bytes={host_bytes / whole_bytes:.3f} "
        f"batches_per_s whole={new['steady'] / args.batch:.0f} sharded_host={shard['steady'] / (rows.stop - rows.start):.0f}"
    )


if __name__ == "__main__":
    main()
