"""Peak host memory of the dataset builder on a PTB-XL folder, projected to the full dataset.

The builder streams records: a process pool reads and tokenizes them a window at a time
(`sentence_corpus`), so the sentences in flight do not grow with the dataset. Two things do:

  - TFDS's shuffle buffer. Each split's serialized examples stay in memory until the split is
    written, up to `tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE` (1000 MiB of serialized
    bytes); past that they spill to bucket files on disk. The largest split, train (folds 1-8 of
    10), sets the peak.
  - Per-record metadata: the parsed `ptbxl_database.csv` rows and the record paths.

Both are measured here per record, and the projection adds them for the records the measured
folder lacks: projected = measured peak + ALLOCATOR_OVERHEAD x shuffle buffer growth (capped)
+ metadata growth.

Host memory is the proportional set size (PSS) summed over the builder process and its pool
workers, sampled every 20 ms: each physical page counted once. The RSS sum beside it counts the
pages a forked worker shares with its parent once per process, so it overstates, and varies with
what the parent held when each pool forked. Workers do not grow with the dataset, but there is one
per core by default: the projection holds for the same --num_workers, and the per-worker figure
says what each further worker adds.

Run from the repository root (builds into a temporary directory, deleted afterwards):
  python -m benchmarks.builder_memory [--ptbxl_dir=PTB-XL folder] [--num_workers=N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import threading
import time
import tracemalloc

from heartlang_jax.data import bundled_sample_dir
from tfds_ptbxl.ptbxl import metadata as ptbxl

FULL_RECORDS = 21_837  # PTB-XL as described in the paper (release 1.0.3 has 21,799 rows)
TRAIN_SHARE = 0.8  # folds 1-8 of the 10 near-equal strat_folds
LIMIT_MIB = 4096
MIB = 1 << 20
# Memory per buffered serialized byte, with a margin for malloc's chunks and the serializer's
# temporaries: a 5,000-record build (the sample's records ten times over) peaked 288 MiB above the
# 500-record one, for 301 MiB more of buffered bytes and 4 MiB more metadata.
ALLOCATOR_OVERHEAD = 1.25


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (Linux)."""
    pids = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            pids += _tree(child)
    return pids


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


class TreeMemorySampler(threading.Thread):
    """Peak PSS and RSS sums (bytes) over this process and its descendants, and the largest PSS
    of one descendant (a pool worker)."""

    def __init__(self, interval_s: float = 0.02):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak_pss = self.peak_rss = self.peak_worker_pss = 0
        self._done = threading.Event()

    def sample(self) -> None:
        pids = _tree(os.getpid())
        pss = [_kib(f"/proc/{p}/smaps_rollup", "Pss:") * 1024 for p in pids]
        rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) * 1024
        self.peak_pss, self.peak_rss = max(self.peak_pss, sum(pss)), max(self.peak_rss, rss)
        self.peak_worker_pss = max([self.peak_worker_pss, *pss[1:]])

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def metadata_bytes_per_record(ptbxl_dir: pathlib.Path) -> tuple[float, int]:
    """Python memory of the parsed rows and record paths the builder keeps, per record."""
    tracemalloc.start()
    rows = ptbxl.read_database(ptbxl_dir)
    items = [(row.ecg_id, ptbxl_dir / row.filename_lr) for row in rows]
    by_id = {row.ecg_id: row for row in rows}
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del items, by_id
    return size / len(rows), len(rows)


def shuffle_bytes_per_example(builder) -> float:
    """What one example costs in TFDS's in-memory shuffle buffer: its serialized bytes plus the
    (hash key, bytes) entry holding them."""
    from tensorflow_datasets.core import example_serializer

    features = builder.info.features
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    example = builder.as_data_source()["train"][0]
    data = serializer.serialize_example(features.encode_example(example))
    entry = (2**127, data)
    return sys.getsizeof(data) + sys.getsizeof(entry) + sys.getsizeof(entry[0]) + 8  # + list slot


def build(ptbxl_dir: pathlib.Path, data_dir: pathlib.Path, num_workers: int):
    import tensorflow_datasets as tfds

    from tfds_ptbxl.ptbxl import ptbxl_dataset_builder

    builder = ptbxl_dataset_builder.Builder(data_dir=str(data_dir), file_format="array_record", num_workers=num_workers)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(ptbxl_dir)))
    return builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl_dir", default=str(bundled_sample_dir()))
    parser.add_argument("--num_workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--projected_records", type=int, default=FULL_RECORDS)
    args = parser.parse_args()
    ptbxl_dir = pathlib.Path(args.ptbxl_dir)

    from tensorflow_datasets.core import shuffle

    per_row, num_records = metadata_bytes_per_record(ptbxl_dir)
    sampler = TreeMemorySampler()
    sampler.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        builder = build(ptbxl_dir, pathlib.Path(data_dir), args.num_workers)
        seconds = time.perf_counter() - started
        sampler.stop()
        per_example = shuffle_bytes_per_example(builder)
        train = builder.info.splits["train"].num_examples
        skipped = builder.info.metadata["skipped"]["total"]

    cap = shuffle.MAX_MEM_BUFFER_SIZE + per_example  # the example that crosses the cap is buffered too
    buffer_growth = min(TRAIN_SHARE * args.projected_records * per_example, cap) - min(train * per_example, cap)
    buffer_growth = ALLOCATOR_OVERHEAD * max(buffer_growth, 0)
    metadata_growth = max(args.projected_records - num_records, 0) * per_row
    projected = sampler.peak_pss + buffer_growth + metadata_growth
    ok = projected < LIMIT_MIB * MIB

    print(f"Builder memory: ptbxl/leads12 from {num_records} records in {ptbxl_dir}, {args.num_workers} workers, "
          f"{seconds:.1f} s ({train} train examples, {skipped} skipped)")  # fmt: skip
    print(f"measured peak, builder + workers: {sampler.peak_pss / MIB:.0f} MiB PSS "
          f"({sampler.peak_rss / MIB:.0f} MiB RSS sum, shared pages counted per process); "
          f"one worker: up to {sampler.peak_worker_pss / MIB:.0f} MiB PSS")  # fmt: skip
    print(f"per record: {per_example / 1024:.1f} KiB serialized in the TFDS shuffle buffer (train split, capped at "
          f"{shuffle.MAX_MEM_BUFFER_SIZE / MIB:.0f} MiB), {per_row:.0f} B of metadata")  # fmt: skip
    print(f"projection to {args.projected_records} records: + {buffer_growth / MIB:.0f} MiB shuffle buffer "
          f"(x{ALLOCATOR_OVERHEAD} allocator overhead) + {metadata_growth / MIB:.1f} MiB metadata "
          f"= {projected / MIB:.0f} MiB (limit {LIMIT_MIB} MiB)")  # fmt: skip
    print(f"records={num_records} workers={args.num_workers} peak_pss_mib={sampler.peak_pss / MIB:.0f} "
          f"peak_rss_sum_mib={sampler.peak_rss / MIB:.0f} worker_pss_mib={sampler.peak_worker_pss / MIB:.0f} "
          f"shuffle_kib_per_record={per_example / 1024:.1f} projected_records={args.projected_records} "
          f"projected_peak_mib={projected / MIB:.0f} limit_mib={LIMIT_MIB} ok={str(ok).lower()}")  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
