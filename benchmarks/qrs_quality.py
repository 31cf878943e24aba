"""How well do the QRS detectors find true heartbeats? The default ("multilead") vs the paper's
XQRS on lead I, side by side.

Real data (PTB-XL, no beat annotations), per record:
  - RR < 250 ms: any two beats closer than 250 ms (240 bpm) means a T wave or noise was counted.
  - Rhythm agreement: the median heart rate from the beats fits the cardiologists' rhythm
    statement (keys of scp_codes): SR 45-105 bpm, SBRAD < 65, STACH > 95; over the records that
    carry one of these.
Synthetic data (tests/test_tokenizer.py's generator, known beat times, 100 Hz, 40-180 bpm):
  - Sensitivity and positive predictivity within 100 ms.

Run from the repository root:
  python -m benchmarks.qrs_quality [--data_dir=PTB-XL folder, default: the bundled 500 records]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.synthetic_ecg import match_beats, synthetic_ecg
from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records
from heartlang_jax.ecg.tokenizer import detect_qrs
from tfds_ptbxl.ptbxl import metadata as ptbxl

DETECTORS = ("multilead", "xqrs")
# Heart rate ranges (bpm) consistent with each rhythm statement.
RHYTHM_BPM = {"SR": (45.0, 105.0), "SBRAD": (0.0, 65.0), "STACH": (95.0, np.inf)}
SYNTHETIC_RHYTHMS = ("regular", "irregular", "ectopic")


def real_data_figures(data_dir: str) -> dict[str, dict[str, float]]:
    rows = ptbxl.read_database(data_dir)
    signals = [records.load_record(f"{data_dir}/{row.filename_lr}") for row in rows]
    figures = {}
    for method in DETECTORS:
        start = time.perf_counter()
        short_rr, agree, labelled, beat_counts = 0, 0, 0, []
        for row, record in zip(rows, signals):
            beats = detect_qrs(record.signal, record.fs, method=method)
            rr_s = np.diff(beats) / record.fs
            beat_counts.append(beats.size)
            short_rr += bool(rr_s.size and rr_s.min() < 0.25)
            statements = [key for key in row.scp_codes if key in RHYTHM_BPM]
            if statements:
                labelled += 1
                bpm = 60.0 / np.median(rr_s) if rr_s.size else 0.0
                agree += all(RHYTHM_BPM[key][0] <= bpm <= RHYTHM_BPM[key][1] for key in statements)
        figures[method] = {
            "records": len(rows),
            "rr_below_250ms": short_rr / len(rows),
            "rhythm_agreement": agree / labelled,
            "rhythm_records": labelled,
            "median_beats": float(np.median(beat_counts)),
            "seconds": time.perf_counter() - start,
        }
    return figures


def synthetic_figures(records_per_rhythm: int = 60) -> dict[str, dict[str, float]]:
    figures = {}
    for method in DETECTORS:
        hits = misses = false = 0
        for seed, rhythm in enumerate(SYNTHETIC_RHYTHMS, start=1):
            rng = np.random.default_rng(seed)
            for bpm in np.linspace(40, 180, records_per_rhythm):
                ecg, beats = synthetic_ecg(rng, bpm, rhythm)
                h, m, f = match_beats(detect_qrs(ecg, 100.0, method=method) / 100.0, beats)
                hits, misses, false = hits + h, misses + m, false + f
        figures[method] = {
            "beats": hits + misses,
            "sensitivity": hits / (hits + misses),
            "positive_predictivity": hits / (hits + false),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bundled_sample_dir()))
    args = parser.parse_args()

    real = real_data_figures(args.data_dir)
    synthetic = synthetic_figures()
    n, labelled = real["multilead"]["records"], real["multilead"]["rhythm_records"]
    print(f"QRS detection quality: {args.data_dir} ({n} records, {labelled} with SR/SBRAD/STACH)")
    print(f"{'figure':<48}{'multilead':>12}{'xqrs':>12}   target")
    lines = [
        ("records with an RR interval < 250 ms", "rr_below_250ms", real, "{:.1%}", "<= 3%"),
        ("rhythm agreement (SR/SBRAD/STACH vs median HR)", "rhythm_agreement", real, "{:.1%}", ">= 98%"),
        ("median beats per record", "median_beats", real, "{:.0f}", ""),
        ("detection time, s", "seconds", real, "{:.2f}", ""),
        (
            f"synthetic sensitivity ({synthetic['multilead']['beats']} beats)",
            "sensitivity",
            synthetic,
            "{:.4f}",
            ">= 0.995",
        ),
        ("synthetic positive predictivity", "positive_predictivity", synthetic, "{:.4f}", ">= 0.995"),
    ]
    for label, key, table, fmt, target in lines:
        values = "".join(f"{fmt.format(table[m][key]):>12}" for m in DETECTORS)
        print(f"{label:<48}{values}   {target}")


if __name__ == "__main__":
    main()
