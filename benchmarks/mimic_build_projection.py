"""Projected time and peak memory of the full MIMIC-IV-ECG build (800,035 records), from a small one.

Writes `--records` records in MIMIC-IV-ECG's layout (`record_list.csv`, `files/p.../s.../N.hea,dat`,
WFDB format 16 at 500 Hz: the bundled PTB-XL records resampled), builds `mimic_iv_ecg` from them
with the real builder, and projects:

  time   = full records x (build seconds per record, the amplitude fit taken out)
           + amplitude_fit_records x (fit seconds per record), for the same --num_workers;
  memory = measured peak PSS (builder + workers, `builder_memory.TreeMemorySampler`)
           + growth of TFDS's shuffle buffer up to its 1000 MiB cap (x1.25 allocator overhead)
           + growth of the per-record metadata (the record list) + a full checkpoint chunk.

What the small build lacks is the file-system cost of a 800,000-file tree (cold cache, network
disks): the projection holds for files read at local-disk speed.

  python -m benchmarks.mimic_build_projection [--records=200] [--num_workers=N]
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import tempfile
import time
import tracemalloc

from benchmarks.builder_memory import ALLOCATOR_OVERHEAD, MIB, TreeMemorySampler, shuffle_bytes_per_example

FULL_RECORDS = 800_035  # MIMIC-IV-ECG 1.0's record_list.csv
TRAIN_SHARE = 0.9


def write_mimic_folder(root: pathlib.Path, count: int) -> None:
    import wfdb

    from tfds_ptbxl import testing

    signals = [testing.ptbxl_signal(i + 1) for i in range(min(count, 50))]
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows = []
    for i in range(count):
        subject, study = 10000000 + 7 * i, 40000000 + 13 * i
        rel = f"files/p{subject // 10000:04d}/p{subject}/s{study}/{study}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(
            str(study), fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signals[i % len(signals)].T,
            fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str((root / rel).parent),
        )  # fmt: skip
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "", "path": rel})
    with open(root / "record_list.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--num_workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--projected_records", type=int, default=FULL_RECORDS)
    args = parser.parse_args()

    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import shuffle

    from heartlang_jax.ecg import sentence_corpus
    from tfds_ptbxl.mimic_iv_ecg import mimic_iv_ecg_dataset_builder as mimic

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "mimic-iv-ecg"
        write_mimic_folder(root, args.records)

        tracemalloc.start()
        listing = mimic.read_record_list(root)
        metadata_per_record = tracemalloc.get_traced_memory()[0] / args.records
        tracemalloc.stop()

        paths = [root / p for p in listing.path]
        started = time.perf_counter()
        sentence_corpus.amplitude_moments(paths, sentence_corpus.SentenceSpec(), args.num_workers)
        fit_per_record = (time.perf_counter() - started) / args.records

        sampler = TreeMemorySampler()
        sampler.start()
        started = time.perf_counter()
        builder = tfds.builder("mimic_iv_ecg", data_dir=str(pathlib.Path(tmp) / "tfds"), num_workers=args.num_workers)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
        seconds = time.perf_counter() - started
        sampler.stop()
        fit_records = min(builder._amplitude_fit_records, int(TRAIN_SHARE * args.records))
        build_per_record = max(seconds - fit_records * fit_per_record, 0.0) / args.records
        per_example = shuffle_bytes_per_example(builder)
        train = builder.info.splits["train"].num_examples
        chunk_size = builder._chunk_size

    full = args.projected_records
    full_fit = min(builder._amplitude_fit_records, int(TRAIN_SHARE * full))
    projected_s = full * build_per_record + full_fit * fit_per_record
    cap = shuffle.MAX_MEM_BUFFER_SIZE + per_example
    buffer_growth = ALLOCATOR_OVERHEAD * max(
        min(TRAIN_SHARE * full * per_example, cap) - min(train * per_example, cap), 0
    )
    sentence_bytes = 256 * 96 * 2 + 2 * 256 + 4 + 16
    chunk_growth = 2 * max(chunk_size - min(args.records, chunk_size), 0) * sentence_bytes  # arrays + npz buffer
    metadata_growth = (full - args.records) * metadata_per_record
    projected_peak = sampler.peak_pss + buffer_growth + chunk_growth + metadata_growth
    disk = full * (sentence_bytes + per_example)  # the chunk checkpoints + the array_record files

    print(f"MIMIC-IV-ECG build: {args.records} records, {args.num_workers} workers: {seconds:.1f} s "
          f"({build_per_record * 1e3:.1f} ms/record building, {fit_per_record * 1e3:.1f} ms/record amplitude fit)")  # fmt: skip
    print(f"measured peak, builder + workers: {sampler.peak_pss / MIB:.0f} MiB PSS; one worker: up to "
          f"{sampler.peak_worker_pss / MIB:.0f} MiB; {per_example / 1024:.1f} KiB per example in the shuffle buffer; "
          f"{metadata_per_record:.0f} B of record-list metadata per record")  # fmt: skip
    print(f"projection to {full} records: {projected_s / 3600:.1f} h "
          f"({full} x {build_per_record * 1e3:.1f} ms + {full_fit} x {fit_per_record * 1e3:.1f} ms fit); "
          f"peak {projected_peak / MIB:.0f} MiB = measured + {buffer_growth / MIB:.0f} shuffle buffer + "
          f"{chunk_growth / MIB:.0f} chunk + {metadata_growth / MIB:.0f} metadata; "
          f"disk ~{disk / 2**30:.0f} GiB (checkpoints + dataset)")  # fmt: skip
    print(f"records={args.records} workers={args.num_workers} build_ms_per_record={build_per_record * 1e3:.2f} "
          f"projected_records={full} projected_hours={projected_s / 3600:.2f} "
          f"projected_hours_per_16_workers={projected_s / 3600 * args.num_workers / 16:.2f} "
          f"peak_pss_mib={sampler.peak_pss / MIB:.0f} projected_peak_mib={projected_peak / MIB:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
