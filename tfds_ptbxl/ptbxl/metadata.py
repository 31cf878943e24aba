"""PTB-XL metadata: the database table, the four label tasks, the official split, the layout.

Everything here reads the dataset's own CSV files, so the same code serves the bundled
500-record sample and the full 21,799-record release.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from heartlang_jax.errors import DatasetLayoutError

PTBXL_VERSION = "1.0.3"
# PhysioNet's per-file tree; `SHA256SUMS.txt` there lists a checksum for every file.
DOWNLOAD_URL = f"https://physionet.org/files/ptb-xl/{PTBXL_VERSION}/"

TASKS = ("superdiagnostic", "subdiagnostic", "form", "rhythm")
SPLIT_FOLDS = {"train": tuple(range(1, 9)), "validation": (9,), "test": (10,)}
METADATA_FILES = ("ptbxl_database.csv", "scp_statements.csv")
SAMPLING_RATES = (100, 500)


@dataclasses.dataclass(frozen=True)
class EcgRow:
    """One row of `ptbxl_database.csv`, reduced to what the pipeline needs."""

    ecg_id: int
    patient_id: int
    strat_fold: int
    scp_codes: Mapping[str, float]
    filename_lr: str  # e.g. records100/00000/00001_lr (no extension)
    filename_hr: str

    def filename(self, sampling_rate: int) -> str:
        return self.filename_lr if sampling_rate == 100 else self.filename_hr

    @property
    def split(self) -> str:
        return split_of_fold(self.strat_fold)


def split_of_fold(fold: int) -> str:
    for split, folds in SPLIT_FOLDS.items():
        if fold in folds:
            return split
    raise ValueError(f"strat_fold must be in 1..10, got {fold}")


def check_layout(root: str | os.PathLike, sampling_rate: int = 100) -> pathlib.Path:
    """Fails early, naming every missing piece, instead of deep inside the build."""
    root = pathlib.Path(root)
    how = (
        f"Put the extracted PTB-XL {PTBXL_VERSION} folder (from {DOWNLOAD_URL}) there, so that it "
        f"holds ptbxl_database.csv, scp_statements.csv and records{sampling_rate}/, or give no "
        "folder to download it."
    )
    if not root.is_dir():
        raise DatasetLayoutError(f"PTB-XL folder {root} does not exist. {how}")
    missing = [name for name in METADATA_FILES if not (root / name).is_file()]
    if not (root / f"records{sampling_rate}").is_dir():
        missing.append(f"records{sampling_rate}/")
    if missing:
        raise DatasetLayoutError(f"PTB-XL folder {root} is incomplete: missing {', '.join(missing)}. {how}")
    return root


def read_database(root: str | os.PathLike) -> list[EcgRow]:
    """Parses `ptbxl_database.csv`; a malformed row is an error naming its ecg_id."""
    path = pathlib.Path(root) / "ptbxl_database.csv"
    rows = []
    with open(path, newline="") as f:
        for line_no, raw in enumerate(csv.DictReader(f), start=2):
            try:
                scp_codes = ast.literal_eval(raw["scp_codes"])
                if not isinstance(scp_codes, dict):
                    raise ValueError("scp_codes is not a dict")
                rows.append(
                    EcgRow(
                        ecg_id=int(raw["ecg_id"]),
                        patient_id=int(float(raw["patient_id"])),
                        strat_fold=int(raw["strat_fold"]),
                        scp_codes=scp_codes,
                        filename_lr=raw["filename_lr"],
                        filename_hr=raw["filename_hr"],
                    )
                )
            except (KeyError, ValueError, SyntaxError) as e:
                raise ValueError(f"{path}, line {line_no} (ecg_id={raw.get('ecg_id')!r}): {e}") from e
    return rows


@dataclasses.dataclass(frozen=True)
class LabelSpace:
    """The class lists of the four tasks and the mapping from SCP statement to class.

    Class order is the sorted set of names found in `scp_statements.csv`, so it depends on that
    file alone and never on which records happen to be present.
    """

    classes: Mapping[str, tuple[str, ...]]
    statement_to_class: Mapping[str, Mapping[str, str]]  # task -> scp code -> class name

    @classmethod
    def from_statements(cls, path: str | os.PathLike) -> LabelSpace:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DatasetLayoutError(f"{path} is empty: no header row of SCP statements")
            code_column = reader.fieldnames[0]  # unnamed index column holding the SCP code
            statements = list(reader)

        def flag(row, column):
            return row[column].strip() not in ("", "0", "0.0")

        mapping: dict[str, dict[str, str]] = {task: {} for task in TASKS}
        for row in statements:
            code = row[code_column]
            if flag(row, "diagnostic"):
                mapping["superdiagnostic"][code] = row["diagnostic_class"]
                mapping["subdiagnostic"][code] = row["diagnostic_subclass"]
            if flag(row, "form"):
                mapping["form"][code] = code
            if flag(row, "rhythm"):
                mapping["rhythm"][code] = code
        classes = {task: tuple(sorted(set(mapping[task].values()))) for task in TASKS}
        return cls(classes=classes, statement_to_class=mapping)

    def multi_hot(self, scp_codes: Mapping[str, float], task: str) -> np.ndarray:
        """Every key of `scp_codes` counts, whatever its likelihood (as in the PTB-XL benchmark)."""
        names = self.classes[task]
        index = {name: i for i, name in enumerate(names)}
        y = np.zeros(len(names), np.uint8)
        for code in scp_codes:
            name = self.statement_to_class[task].get(code)
            if name is not None:
                y[index[name]] = 1
        return y

    def num_classes(self, task: str) -> int:
        return len(self.classes[task])


def fold_rows(rows: Sequence[EcgRow], split: str) -> list[EcgRow]:
    folds = SPLIT_FOLDS[split]
    return [row for row in rows if row.strat_fold in folds]
