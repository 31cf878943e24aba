"""The released HeartLang split files, shipped as data beside each builder (`<name>/splits.csv.gz`).

Each file has the columns `split,record,<class>...`: the split (train/validation/test), the
record's path in the dataset's own layout without extension, and one 0/1 column per class in the
released order. They hold the facts of the released CSVs (split membership, class names and
labels) and nothing else; `python -m tfds_ptbxl.split_files REFERENCE_DIR` rewrites them from the
released `datasets/dataset_preprocess/` folder (reproducibly: gzip without a timestamp).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import pathlib
import sys

import numpy as np

from heartlang_jax import atomic_file

SPLITS = ("train", "validation", "test")
_RELEASED_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class SplitRow:
    split: str
    record: str  # path in the dataset's layout, no extension
    labels: np.ndarray  # [num_classes] uint8


def read(path: str | os.PathLike) -> tuple[tuple[str, ...], list[SplitRow]]:
    """Returns the class names and the rows; a malformed row is an error naming its line."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["split", "record"] or len(header) < 3:
            raise ValueError(f"{path}: expected a header 'split,record,<class>,...', got {header}")
        classes = tuple(header[2:])
        rows = []
        for line_no, fields in enumerate(reader, start=2):
            if len(fields) != len(header) or fields[0] not in SPLITS:
                raise ValueError(f"{path}, line {line_no}: expected {len(header)} fields and a split in {SPLITS}")
            try:
                labels = np.asarray([int(float(x)) for x in fields[2:]], np.uint8)
            except ValueError as e:
                raise ValueError(f"{path}, line {line_no} (record {fields[1]}): {e}") from e
            rows.append(SplitRow(fields[0], fields[1], labels))
    return classes, rows


def _write(dest: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_file.atomic_write(dest, gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0))


def _from_released(files: dict[str, pathlib.Path], record_column: str, first_label: int, to_record) -> tuple:
    header, rows = None, []
    for split, path in files.items():
        with open(path, newline="") as f:
            reader = csv.reader(f)
            columns = next(reader)
            classes = columns[first_label:]
            if header is None:
                header = ["split", "record", *classes]
            elif header[2:] != classes:
                raise ValueError(f"{path}: class columns differ from the other split files")
            at = columns.index(record_column)
            rows += [[split, to_record(fields[at]), *fields[first_label:]] for fields in reader]
    return header, rows


def main(reference: str) -> None:
    root = pathlib.Path(reference)
    here = pathlib.Path(__file__).parent
    # CPSC 2018: icbeb_{train,val,test}.csv; `filename` (A0001); labels from the 8th column on.
    cpsc = {_RELEASED_SPLIT_NAMES[s]: root / "CPSC2018" / f"icbeb_{s}.csv" for s in ("train", "val", "test")}
    _write(here / "cpsc2018" / "splits.csv.gz", *_from_released(cpsc, "filename", 7, lambda name: name))
    # CSN: chapman_{train,val,test}.csv; `ecg_path` (/chapman/WFDBRecords/NN/NNN/JSnnnnn.mat);
    # labels from the 4th column on (after age and diagnose).
    csn = {_RELEASED_SPLIT_NAMES[s]: root / "CSN" / f"chapman_{s}.csv" for s in ("train", "val", "test")}
    _write(
        here / "csn" / "splits.csv.gz",
        *_from_released(csn, "ecg_path", 3, lambda p: p.removeprefix("/chapman/").removesuffix(".mat")),
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/heartlang-released/datasets/dataset_preprocess")
