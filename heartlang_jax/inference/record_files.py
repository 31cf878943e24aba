"""Which records a `--records=` argument names: the one record discovery of the `embed` and
`predict` commands (and of anyone listing records for `HeartLangModel.embed_many/predict_many`).

`--records` is
  - a folder: every `.hea` record below it and every `.mat` without a `.hea` (original CPSC 2018
    files), ids relative to the folder, sorted;
  - a records CSV (a file ending in `.csv`): its `record` column holds paths relative to the CSV's
    folder (the format of the `csv` dataset's label file; other columns are ignored, except `fs`,
    the rate of a `.npy` record, which is listed as a `records.ArrayFile`), ids as written without
    extension, in the CSV's row order;
  - a glob (`'data/**/*.hea'`, quoted): the records of the files it matches, sorted;
  - any other path: one record (which may then fail to load, and is reported as skipped).
Only the names are listed here; reading a record, and skipping one that cannot be read, is the
model's job.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import os
import pathlib
import sys

from heartlang_jax import errors
from heartlang_jax.ecg import records

# Extensions that name a record's files; the record itself is the path without them.
RECORD_EXTENSIONS = (".hea", ".dat", ".mat")
# The column of a records CSV that holds the record paths, and the one with the rate of `.npy` records.
RECORD_COLUMN = "record"
RATE_COLUMN = "fs"

_GLOB_CHARS = frozenset("*?[")


class NoRecordsError(errors.HeartLangError, ValueError):
    """`--records` names nothing that looks like a record, or its records CSV is malformed."""


def define_command_flags(checkpoint_help: str, out_help: str) -> None:
    """The flags the `embed` and `predict` commands share (each defines them when it runs)."""
    from absl import flags

    flags.DEFINE_string("checkpoint", None, checkpoint_help)
    flags.DEFINE_string("records", None, "A folder of records, a records CSV, a glob, or one record.")
    flags.DEFINE_string("out", None, out_help)
    flags.DEFINE_integer("batch_size", 64, "Windows per device batch.")
    flags.DEFINE_string("dtype", "float32", "Compute dtype: float32, or bfloat16 for speed on GPU/TPU.")
    flags.DEFINE_bool("progress", True, "Show a progress bar with the ETA.")
    flags.DEFINE_float("window_s", None, "Window length in seconds (default: the model's, 10 s).")
    flags.DEFINE_float("stride_s", None, "Window stride in seconds (default: window_s, no overlap).")
    flags.mark_flags_as_required(["checkpoint", "records", "out"])


def summarize(verb: str, done: int, found: int, out, seconds: float, windows: int) -> dict:
    """The run summary the `embed` and `predict` commands return, logged in one line."""
    summary = {verb: done, "skipped": found - done, "windows": windows, "out": os.fspath(out), "seconds": seconds}
    logging.info(
        "%s %d of %d record(s) (%d skipped) into %s in %.1f s (%d window(s))",
        verb,
        done,
        found,
        found - done,
        out,
        seconds,
        windows,
    )
    return summary


def run_command(argv, run, verb: str, **options) -> None:
    """`embed`'s and `predict`'s main: `run(checkpoint, records, out, ...)` with the shared flags
    and `options`; a user's error is one line and exit 2, nothing done at all exit 1."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        summary = run(
            str(f.checkpoint),
            str(f.records),
            str(f.out),  # required flags: never None
            batch_size=f.batch_size,
            dtype=f.dtype,
            progress=f.progress,
            window_s=f.window_s,
            stride_s=f.stride_s,
            **options,
        )
    except (errors.HeartLangError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(2)
    if summary[verb] == 0:
        logging.error("no record could be %s; see the reasons in %s", verb, summary["out"])
        sys.exit(1)


def record_path(path: str | os.PathLike) -> pathlib.Path:
    """A record's path without extension ('x/00001_lr.hea' -> 'x/00001_lr')."""
    path = pathlib.Path(path)
    return path.with_suffix("") if path.suffix.lower() in RECORD_EXTENSIONS else path


def find_records(spec: str | os.PathLike) -> list[tuple[str, pathlib.Path | records.ArrayFile]]:
    """(record id, record path without extension) of every record `spec` names (module docstring)."""
    text = os.fspath(spec)
    path = pathlib.Path(text)
    if path.is_dir():
        found = {p.with_suffix("") for p in path.rglob("*.hea")}
        found |= {p.with_suffix("") for p in path.rglob("*.mat") if not p.with_suffix(".hea").exists()}
        if not found:
            raise NoRecordsError(f"--records={text}: the folder holds no .hea or .mat record")
        return sorted((p.relative_to(path).as_posix(), p) for p in found)
    if path.suffix.lower() == ".csv" and path.is_file():
        return _csv_records(path)
    if _GLOB_CHARS & set(text):
        matches = [pathlib.Path(m) for m in glob.glob(text, recursive=True)]
        found = {record_path(m) for m in matches if m.is_file() and m.suffix.lower() in RECORD_EXTENSIONS}
        if not found:
            raise NoRecordsError(f"--records={text}: the glob matches no .hea, .dat or .mat file")
        return sorted((p.as_posix(), p) for p in found)
    record = record_path(path)
    return [(record.as_posix(), record)]


def _csv_records(path: pathlib.Path) -> list[tuple[str, pathlib.Path | records.ArrayFile]]:
    """The records of a records CSV, in row order; a malformed file or row is one line naming it.
    A `.npy` row is an `ArrayFile` at its `fs` (0 when the row has none: reading it then fails
    with a reason naming the record, as in the `csv` dataset)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if RECORD_COLUMN not in columns:
            raise NoRecordsError(f"--records={path}: no {RECORD_COLUMN!r} column (columns: {', '.join(columns)})")
        found: list[tuple[str, pathlib.Path | records.ArrayFile]] = []
        for row_number, row in enumerate(reader, start=1):  # rows counted after the header, as the csv dataset does
            value = (row.get(RECORD_COLUMN) or "").strip()
            if not value:
                raise NoRecordsError(
                    f"--records={path}: row {row_number} (line {row_number + 1}): empty {RECORD_COLUMN!r} field"
                )
            if pathlib.PurePath(value).suffix.lower() == ".npy":
                found.append(
                    (
                        value[: -len(".npy")],
                        records.ArrayFile(os.fspath(path.parent / value), _rate(path, row_number, row)),
                    )
                )
                continue
            found.append((record_path(value).as_posix(), record_path(path.parent / value)))
    if not found:
        raise NoRecordsError(f"--records={path}: the CSV has no rows")
    return found


def _rate(path: pathlib.Path, row_number: int, row: dict) -> float:
    """The `fs` of a records CSV row (0.0 when it has none); a value that is no rate is one line."""
    text = (row.get(RATE_COLUMN) or "").strip()
    if not text:
        return 0.0
    try:
        fs = float(text)
    except ValueError:
        fs = -1.0
    if not fs > 0 or not math.isfinite(fs):
        raise NoRecordsError(
            f"--records={path}: row {row_number} (line {row_number + 1}): field {RATE_COLUMN!r}: {text!r} is not a positive rate in Hz"
        )
    return fs
