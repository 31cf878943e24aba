"""Tokenizer throughput: the library on all cores vs the paper's pipeline in a plain loop.

  library:  sentence_corpus.tokenize_records(paths)   multilead detector, a worker per core
            (what the dataset builder runs)
  baseline: for path: load_record + QRSTokenizer(detector="xqrs").tokenize   (one process:
            wfdb.processing.xqrs_detect on lead I, then the same segmentation)

Both load the records (paths in, sentences out). Each figure is the best of --repeats runs, run
alternately, as the machine may be shared. Pool start-up is inside the library's time. CPU ms per
record (all processes) shows the work itself, which other jobs on the machine do not inflate.

Run from the repository root:
  python -m benchmarks.tokenizer_speed [--data_dir=PTB-XL folder] [--num_workers=N]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records, sentence_corpus
from heartlang_jax.ecg.tokenizer import QRSTokenizer, TokenizerError
from tfds_ptbxl.ptbxl import metadata as ptbxl


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_figures(
    ours: Callable[[], int], theirs: Callable[[], int], num_records: int, repeats: int
) -> dict[Callable[[], int], tuple[float, float, int]]:
    """Per function: best records/s and least CPU ms per record over `repeats` runs, run
    alternately so that both see the same machine load, and the sentences made."""
    best = {fn: (0.0, float("inf"), 0) for fn in (ours, theirs)}
    for _ in range(repeats):
        for fn in (ours, theirs):
            wall, cpu = time.perf_counter(), _cpu_seconds()
            made = fn()
            rate = num_records / (time.perf_counter() - wall)
            cpu_ms = 1000 * (_cpu_seconds() - cpu) / num_records
            best[fn] = (max(best[fn][0], rate), min(best[fn][1], cpu_ms), made)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bundled_sample_dir()))
    parser.add_argument("--num_workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    paths = [f"{args.data_dir}/{row.filename_lr}" for row in ptbxl.read_database(args.data_dir)]
    for path in paths:  # warm the file cache so that neither side pays for the first read
        records.load_record(path)
    spec = sentence_corpus.SentenceSpec()
    baseline = QRSTokenizer(detector="xqrs")

    def library_files() -> int:
        results = sentence_corpus.tokenize_records(list(enumerate(paths)), spec, num_workers=args.num_workers)
        return sum(reason is None for _, _, reason in results)

    def baseline_files() -> int:
        made = 0
        for path in paths:
            record = records.load_record(path)
            try:
                baseline.tokenize(record.signal, record.fs, record.lead_names, record.name)
                made += 1
            except TokenizerError:
                pass
        return made

    print(
        f"Tokenizer speed: {len(paths)} records from {args.data_dir}, library on {args.num_workers} "
        f"workers, best of {args.repeats}"
    )
    figures = best_figures(library_files, baseline_files, len(paths), args.repeats)
    (ours_rate, ours_cpu, ours_made), (theirs_rate, theirs_cpu, theirs_made) = (
        figures[library_files],
        figures[baseline_files],
    )
    print(
        f"library (multilead, {args.num_workers} workers): {ours_rate:.1f} records/s, {ours_cpu:.2f} CPU ms/record, {ours_made} sentences"
    )
    print(
        f"baseline (xqrs loop, 1 process):      {theirs_rate:.1f} records/s, {theirs_cpu:.2f} CPU ms/record, {theirs_made} sentences"
    )
    print(
        f"ratio={ours_rate / theirs_rate:.2f}x library_records_per_s={ours_rate:.1f} baseline_records_per_s={theirs_rate:.1f}"
    )


if __name__ == "__main__":
    main()
