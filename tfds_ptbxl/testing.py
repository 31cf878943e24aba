"""Helpers for the builder tests: small dataset folders in each dataset's own layout.

Signals are real: bundled PTB-XL records (CC BY 4.0), resampled to the dataset's 500 Hz and saved
in its file format. Records and labels come from the shipped split files, so the builders read
exactly what they read on the full data, only fewer records.
"""

from __future__ import annotations

import csv
import gzip
import pathlib

import numpy as np
import scipy.io
import scipy.signal
import wfdb

from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records
from heartlang_jax.ecg.records import STANDARD_LEADS
from tfds_ptbxl import split_files


def ptbxl_signal(ecg_id: int, fs: int = 500) -> np.ndarray:
    """[12, 10 * fs] mV: a bundled PTB-XL record at `fs`."""
    path = bundled_sample_dir() / "records100" / "00000" / f"{ecg_id:05d}_lr"
    x = records.load_record(path).signal.astype(np.float64)
    return scipy.signal.resample_poly(x, fs, 100, axis=1) if fs != 100 else x


def subset_split_file(
    shipped: pathlib.Path, dest: pathlib.Path, per_split: dict[str, int]
) -> list[split_files.SplitRow]:
    """Writes the first `per_split[split]` rows of each split of `shipped` to `dest`; returns them."""
    classes, rows = split_files.read(shipped)
    chosen = [row for split, n in per_split.items() for row in [r for r in rows if r.split == split][:n]]
    with gzip.open(dest, "wt", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["split", "record", *classes])
        writer.writerows([row.split, row.record, *map(str, row.labels)] for row in chosen)
    return chosen


def write_cinc(path: pathlib.Path, signal_mv: np.ndarray, fs: float, gain: float = 1000.0) -> None:
    """PhysioNet/CinC layout (CSN, CPSC via CinC 2020): int16 'val' in `.mat`, a WFDB header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digital = np.round(signal_mv * gain).astype(np.int16)
    scipy.io.savemat(path.with_suffix(".mat"), {"val": digital}, format="4")
    name = path.name
    lines = [f"{name} {len(digital)} {fs:g} {digital.shape[1]}"]
    lines += [f"{name}.mat 16+24 {gain:g}/mV 16 0 {digital[i, 0]} 0 0 {lead}" for i, lead in enumerate(STANDARD_LEADS)]
    path.with_suffix(".hea").write_text("\n".join(lines + ["#Age: 56", "#Sex: Male", "#Dx: 426783006"]) + "\n")


def write_wfdb(path: pathlib.Path, signal_mv: np.ndarray, fs: float, gain: float = 1000.0) -> None:
    """WFDB `.hea` + `.dat` (format 16), as PTB-XL and MIMIC-IV-ECG store records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        path.name, fs=fs, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=signal_mv.T,
        fmt=["16"] * 12, adc_gain=[gain] * 12, baseline=[0] * 12, write_dir=str(path.parent),
    )  # fmt: skip


def write_cpsc_original(path: pathlib.Path, signal_mv: np.ndarray) -> None:
    """The original CPSC 2018 file: a struct 'ECG' with 'sex', 'age' and 'data' (mV, 500 Hz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path.with_suffix(".mat"), {"ECG": {"sex": "Male", "age": 56.0, "data": signal_mv}})
