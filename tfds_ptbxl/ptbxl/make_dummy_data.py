"""Writes `dummy_data/`: a tiny PTB-XL folder for the builder test (run once; output is committed).

Seven real records from the bundled sample (CC BY 4.0) spread over the three splits, plus bad
records that a full-scale build meets in the wild and must skip, each named in the dataset info:
a corrupt header, a truncated `.dat`, samples marked invalid (NaN), every lead flat (a record with
only some leads flat is kept without them, see tests/test_bad_inputs.py), and a record with no
detectable beat.

    python -m tfds_ptbxl.ptbxl.make_dummy_data
"""

from __future__ import annotations

import csv
import pathlib
import shutil

import numpy as np
import wfdb

from heartlang_jax.data import bundled_sample_dir
from tfds_ptbxl.ptbxl import metadata as ptbxl

OUT = pathlib.Path(__file__).parent / "dummy_data"
# ecg_id -> fold: train (1-8) x4, validation (9) x2, test (10) x1, as in the real split.
GOOD = {1: 3, 2: 2, 3: 5, 4: 3, 5: 4, 11: 9, 17: 10}
BAD = {  # ecg_id -> (fold, what is wrong)
    6: (1, "corrupt_header"),
    7: (1, "truncated_dat"),
    8: (1, "nan"),
    9: (9, "all_flat"),
    10: (10, "no_beat"),
}


def _write_signal(dest: pathlib.Path, name: str, signal_mv: np.ndarray) -> None:
    wfdb.wrsamp(
        name,
        fs=100,
        units=["mV"] * 12,
        sig_name=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"],
        p_signal=signal_mv.T,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(dest),
    )


def main() -> None:
    src = bundled_sample_dir()
    if OUT.exists():
        shutil.rmtree(OUT)
    records = OUT / "records100" / "00000"
    records.mkdir(parents=True)
    shutil.copy(src / "scp_statements.csv", OUT)
    rows = {row.ecg_id: row for row in ptbxl.read_database(src)}
    for ecg_id in GOOD:
        for ext in (".hea", ".dat"):
            shutil.copy(src / f"{rows[ecg_id].filename_lr}{ext}", records)

    rng = np.random.default_rng(0)
    base = wfdb.rdrecord(str(src / rows[1].filename_lr)).p_signal.T  # [12, 1000] mV
    for ecg_id, (_, kind) in BAD.items():
        name = f"{ecg_id:05d}_lr"
        if kind in ("corrupt_header", "truncated_dat"):
            for ext in (".hea", ".dat"):
                shutil.copy(src / f"{rows[ecg_id].filename_lr}{ext}", records)
            if kind == "corrupt_header":
                (records / f"{name}.hea").write_text("this is not a WFDB header\n")
            else:
                data = (records / f"{name}.dat").read_bytes()
                (records / f"{name}.dat").write_bytes(data[: len(data) // 3])
            continue
        signal = base.copy()
        if kind == "nan":
            signal[:, 400:450] = np.nan  # written as WFDB's invalid-sample marker
        elif kind == "all_flat":
            signal[:] = 0.0
        elif kind == "no_beat":
            signal = 0.01 * rng.standard_normal(signal.shape)
        _write_signal(records, name, signal)

    with open(src / "ptbxl_database.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        keep = {**GOOD, **{k: v[0] for k, v in BAD.items()}}
        out_rows = []
        for raw in reader:
            ecg_id = int(raw["ecg_id"])
            if ecg_id in keep:
                raw["strat_fold"] = str(keep[ecg_id])
                out_rows.append(raw)
    with open(OUT / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or ()))
        writer.writeheader()
        writer.writerows(out_rows)
    print(f"wrote {len(out_rows)} records to {OUT}")


if __name__ == "__main__":
    main()
