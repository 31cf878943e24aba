"""A dataset CSV over bundled PTB-XL records in three formats, for the `csv` dataset's tests.

`write(dest, n)` writes `dest/labels.csv` over the first `n` bundled records (real signals,
CC BY 4.0), taking turns between three record formats: WFDB at 100 Hz (the bundled `.hea` +
`.dat`, copied), PhysioNet/CinC `.mat` at 500 Hz (int16 'val' [leads, samples] + a WFDB `.hea`,
the layout `records.load_record` reads; resampled from 100 Hz) and `.npy` in mV at 100 Hz (every
other one stored [samples, leads]). Labels are PTB-XL's superdiagnostic classes as 0/1 columns
(or one `labels` column), the split PTB-XL's folds (1-8 train, 9 validation, 10 test) unless
`split=False`. `long_records` appends that many 30 s `.npy` records (three bundled records
end to end), labelled as their first.
"""

from __future__ import annotations

import csv
import pathlib
import shutil

import numpy as np

from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.ecg import records
from tfds_ptbxl import testing
from tfds_ptbxl.ptbxl import metadata

FORMATS = ("wfdb", "mat", "npy")


def classes() -> tuple[str, ...]:
    return tuple(_labels().classes["superdiagnostic"])


def _labels() -> metadata.LabelSpace:
    return metadata.LabelSpace.from_statements(bundled_sample_dir() / "scp_statements.csv")


def write(
    dest: pathlib.Path, n: int = 60, *, split: bool = True, labels_column: bool = False, long_records: int = 0
) -> pathlib.Path:
    """Writes the records and `dest/labels.csv`; returns the CSV's path."""
    root = bundled_sample_dir()
    rows = metadata.read_database(root)[: n + 3 * long_records]
    space = _labels()
    names = classes()
    table = []
    for i, row in enumerate(rows[:n]):
        kind = FORMATS[i % len(FORMATS)]
        source = root / row.filename(100)
        if kind == "wfdb":
            (dest / "wfdb").mkdir(parents=True, exist_ok=True)
            for suffix in (".hea", ".dat"):
                shutil.copyfile(source.with_name(source.name + suffix), dest / "wfdb" / (source.name + suffix))
            record, fs = f"wfdb/{source.name}", ""
        elif kind == "mat":
            testing.write_cinc(dest / "mat" / f"{row.ecg_id:05d}", testing.ptbxl_signal(row.ecg_id, 500), 500)
            record, fs = f"mat/{row.ecg_id:05d}.mat", ""
        else:
            signal = records.load_record(source).signal  # [12, samples] mV
            (dest / "npy").mkdir(parents=True, exist_ok=True)
            np.save(dest / "npy" / f"{row.ecg_id:05d}.npy", signal if i % 2 else signal.T)
            record, fs = f"npy/{row.ecg_id:05d}.npy", "100"
        table.append((record, fs, row.split, space.multi_hot(row.scp_codes, "superdiagnostic")))
    for k in range(long_records):
        parts = rows[n + 3 * k : n + 3 * k + 3]
        signal = np.concatenate([records.load_record(root / r.filename(100)).signal for r in parts], axis=1)
        (dest / "npy").mkdir(parents=True, exist_ok=True)
        np.save(dest / "npy" / f"long{k}.npy", signal)
        table.append((f"npy/long{k}.npy", "100", "test", space.multi_hot(parts[0].scp_codes, "superdiagnostic")))
    path = dest / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        label_header = ["labels"] if labels_column else list(names)
        writer.writerow(["record", "fs", *(["split"] if split else []), *label_header])
        for record, fs, row_split, hot in table:
            labels = [";".join(c for c, h in zip(names, hot) if h)] if labels_column else [str(int(h)) for h in hot]
            writer.writerow([record, fs, *([row_split] if split else []), *labels])
    return path
