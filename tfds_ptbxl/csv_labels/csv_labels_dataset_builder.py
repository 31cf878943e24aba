"""Your own ECGs and labels, listed in a CSV, as HeartLang ECG sentences (`data.dataset="csv"`).

One row per record. Columns (a header row names them; their order does not matter):

  - `record` (required): the record's path relative to the CSV's folder. A WFDB record
    (`x.hea` + its `.dat`; give `x`, `x.hea` or `x.dat`), a PhysioNet/CinC `.mat` with its `.hea`
    (give `x`, `x.hea` or `x.mat`), an original CPSC 2018 `.mat` (a struct 'ECG', 500 Hz), or a
    `.npy` array in mV: [leads, samples] or [samples, leads] (the shorter axis is the leads), 12
    leads in the order I, II, III, aVR, aVL, aVF, V1-V6, or one lead, read as lead I.
  - `fs`: the sampling rate in Hz of `.npy` records (else `data.csv_fs` for all of them); WFDB
    and `.mat` records carry their own.
  - `split`: train, validation or test. Without the column (or with it empty in every row) the
    rows are split 80/10/10 by a seeded stratified rule: each row is grouped by its rarest class
    (the class with the fewest rows; rows without a class form one group), each group is shuffled
    by `numpy.random.default_rng(SPLIT_SEED)` and its i-th of n rows goes to train when
    (i + 0.5) / n < 0.8, to validation below 0.9, else to test.
  - The labels, one of two ways: a 0/1 column per class (every column not named above is a
    class), or one `labels` column of class names separated by `;` (empty: no class). With
    `labels`, the classes are every name the column holds (sorted). A class without a positive
    training row is kept and logged (the model cannot learn it; its AUC is NaN where it has no
    positive).

The task is called `classes` (its class names in `info.metadata["classes"]["classes"]`), so
fine-tuning runs with `--config.task=classes`. Every row is an example of that task, with or
without a positive class.

A record longer than a window (`data.csv_window_s`, default the sentence's 10 s) is cut into
windows every `data.csv_stride_s` seconds (default: the window, no overlap), plus one window ending on
the last sample when those stop short (`sentence_corpus.window_spans`, inference's rule too); a record no longer than a window is one window (as every other builder
reads it). Each window is an example with the record's labels, its `record_id` (the CSV row,
0-based, not counting the header), `window` (0-based) and `num_windows`; the windows are logged
in total and `info.metadata["windows"]` counts them. Fine-tuning trains on windows and scores a
record by the mean of its windows' probabilities.

Checked before anything is read, each bad row named in one line (row number and field): a
missing record file, an unknown split, a label that is not 0 or 1, a `.npy` without a rate.
A record that exists but cannot be read or tokenized is skipped and logged, as in the other
builders. The amplitude standardization is fitted on the training rows' records.

The build is cached by content: the builder config's name carries a hash of the CSV's bytes, of
the size and modification time (not the content) of every file its rows name, and of the window
settings (`leads12_<hash>`), so editing the CSV or replacing a record rebuilds, and an unchanged
one is read back.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from heartlang_jax import errors
from heartlang_jax.ecg import records, sentence_corpus
from tfds_ptbxl import labelled, sentences
from tfds_ptbxl.sentences import BuilderConfig

TASK = "classes"
SPLITS = ("train", "validation", "test")
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.9)  # cumulative: train below 0.8, validation below 0.9, test above
RESERVED = ("record", "split", "fs", "labels")
_CACHE_FORMAT = 1  # bump when what the hash covers changes


class CsvRowError(errors.DatasetLayoutError):
    """A row of the dataset CSV that cannot be used: the message names the CSV, row and field."""


@dataclasses.dataclass(frozen=True)
class Row:
    number: int  # 1-based data row (line number - 1)
    record: str  # as written in the CSV
    source: str | records.ArrayFile  # what records.load reads
    files: tuple[str, ...]  # the files it names, for the cache key
    split: str
    labels: np.ndarray  # [C] uint8


@dataclasses.dataclass(frozen=True)
class Table:
    path: pathlib.Path
    classes: tuple[str, ...]
    rows: tuple[Row, ...]
    split_given: bool


def _where(path: pathlib.Path, number: int, field: str) -> str:
    return f"{path}, row {number} (line {number + 1}), field {field!r}"


def _resolve(root: pathlib.Path, record: str, fs: float) -> tuple[str | records.ArrayFile, tuple[str, ...]] | str:
    """(what records.load reads, the files it names) of a `record` cell, or what is missing."""
    path = root / record
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.is_file():
            return f"file {path} not found"
        if not fs > 0:
            return "a .npy record needs its rate: an `fs` column or data.csv_fs"
        return records.ArrayFile(os.fspath(path), fs), (os.fspath(path),)
    stem = path.with_suffix("") if suffix in (".hea", ".dat", ".mat") else path
    header, mat = stem.with_name(stem.name + ".hea"), stem.with_name(stem.name + ".mat")
    if header.is_file():
        files = [header, *sorted(stem.parent.glob(stem.name + ".dat")), *([mat] if mat.is_file() else [])]
        return os.fspath(stem), tuple(os.fspath(f) for f in files)
    if mat.is_file():  # an original CPSC 2018 file: no header
        return os.fspath(stem), (os.fspath(mat),)
    return f"record {stem} not found (no {header.name}, {mat.name} or .npy)"


def read_table(path: str | os.PathLike, default_fs: float = 0.0, allow_missing: bool = False) -> Table:
    """The CSV's classes and rows; CsvRowError naming the first bad row (each one is logged).
    `allow_missing` (`data.allow_missing_records`): a row whose record file is not there is a
    logged skip naming it, as the other builders treat a partial dataset folder."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise errors.DatasetLayoutError(f"data.csv: {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        lines = [fields for fields in reader if any(x.strip() for x in fields)]
    if "record" not in header:
        raise CsvRowError(f"{path}: the header {header} has no 'record' column")
    if len(set(header)) != len(header):
        raise CsvRowError(f"{path}: the header names a column twice: {header}")
    class_columns = [h for h in header if h not in RESERVED]
    if "labels" in header and class_columns:
        raise CsvRowError(
            f"{path}: give the classes either as a `labels` column or as 0/1 columns, not both "
            f"(found labels and {class_columns})"
        )
    if "labels" not in header and not class_columns:
        raise CsvRowError(f"{path}: no labels: add a 0/1 column per class, or a `labels` column of class names")
    if not lines:
        raise CsvRowError(f"{path}: no rows")
    at = {name: i for i, name in enumerate(header)}
    root = path.parent
    problems: list[str] = []
    cells = []
    for number, fields in enumerate(lines, start=1):
        if len(fields) != len(header):
            problems.append(
                f"{path}, row {number} (line {number + 1}): {len(fields)} fields, the header has {len(header)}"
            )
            continue
        cells.append((number, {name: fields[i].strip() for name, i in at.items()}))
    split_given = "split" in header and any(c["split"] for _, c in cells)
    names: list[str] = []
    if "labels" in header:
        names = sorted({n.strip() for _, c in cells for n in c["labels"].split(";") if n.strip()})
    classes = tuple(class_columns or names)
    rows = []
    for number, c in cells:
        bad = len(problems)
        split = c.get("split", "")
        if split_given and split not in SPLITS:
            problems.append(f"{_where(path, number, 'split')}: {split!r} is not one of {SPLITS}")
        fs = default_fs
        if c.get("fs"):
            try:
                fs = float(c["fs"])
            except ValueError:
                fs = -1.0
            if not fs > 0 or not np.isfinite(fs):
                problems.append(f"{_where(path, number, 'fs')}: {c['fs']!r} is not a positive rate in Hz")
        labels = np.zeros(len(classes), np.uint8)
        if class_columns:
            for k, name in enumerate(class_columns):
                value = c[name]
                try:
                    number_value = float(value)
                except ValueError:
                    number_value = -1.0
                if number_value not in (0.0, 1.0):
                    problems.append(f"{_where(path, number, name)}: label {value!r} is not 0 or 1")
                labels[k] = number_value == 1.0
        else:
            for name in (n.strip() for n in c["labels"].split(";")):
                if not name:
                    continue
                if any(ch in name for ch in ',\t"') or name in RESERVED:
                    problems.append(
                        f"{_where(path, number, 'labels')}: {name!r} is not a class name (names are separated by "
                        f"';' and hold no comma, tab or quote)"
                    )
                else:
                    labels[classes.index(name)] = 1
        if not c["record"]:
            problems.append(f"{_where(path, number, 'record')}: empty")
            continue
        resolved = _resolve(root, c["record"], fs)
        if isinstance(resolved, str):
            if allow_missing:
                logging.warning(
                    "%s: %s; skipped (data.allow_missing_records)", _where(path, number, "record"), resolved
                )
            else:
                problems.append(f"{_where(path, number, 'record')}: {resolved}")
            continue
        if len(problems) == bad:
            rows.append(Row(number, c["record"], resolved[0], resolved[1], split, labels))
    if problems:
        # The error carries the first bad row (main prints it as its one line); the others are
        # logged here, one line each, so no row is printed twice.
        for line in problems[1:]:
            logging.error("%s", line)
        more = f" (and {len(problems) - 1} more bad rows, each logged above)" if len(problems) > 1 else ""
        raise CsvRowError(problems[0] + more)
    if not split_given:
        rows = stratified_split(rows, len(classes))
    trained = np.sum([row.labels for row in rows if row.split == "train"], axis=0)
    for name, count in zip(classes, trained):
        if not count:
            logging.warning("%s: class %r has no positive in the training rows; the model cannot learn it", path, name)
    for split in SPLITS:
        if not any(row.split == split for row in rows):
            raise CsvRowError(f"{path}: no row in the {split} split ({len(rows)} rows); every split needs one")
    return Table(path, classes, tuple(rows), split_given)


def stratified_split(rows: list[Row], num_classes: int) -> list[Row]:
    """The module docstring's seeded stratified 80/10/10 split, by each row's rarest class."""
    counts = np.sum([row.labels for row in rows], axis=0) if rows else np.zeros(num_classes)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        present = np.flatnonzero(row.labels)
        key = int(present[np.argmin(counts[present])]) if len(present) else -1
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(SPLIT_SEED)
    split_of = {}
    for key in sorted(groups):
        members = groups[key]
        order = rng.permutation(len(members))
        for rank, member in enumerate(order):
            position = (rank + 0.5) / len(members)
            split_of[members[member]] = (
                "train" if position < SPLIT_FRACTIONS[0] else "validation" if position < SPLIT_FRACTIONS[1] else "test"
            )
    return [dataclasses.replace(row, split=split_of[i]) for i, row in enumerate(rows)]


def cache_key(table: Table, window_s: float, stride_s: float, default_fs: float) -> str:
    """12 hex digits of sha256 over the CSV's bytes, each named file's size and mtime, and the
    window settings (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(table.path.read_bytes())
    for row in table.rows:
        for name in row.files:
            stat = os.stat(name)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps([_CACHE_FORMAT, window_s, stride_s, default_fs, SPLIT_SEED]).encode())
    return digest.hexdigest()[:12]


class Builder(tfds.core.GeneratorBasedBuilder):
    """The records and labels of a CSV as ECG sentences (see the module docstring)."""

    name = "csv"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ECG sentences of the records a CSV lists, cut into windows, with its labels."}
    BUILDER_CONFIGS = labelled.builder_configs("csv")
    DEFAULT_CONFIG_NAME = "leads12"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "The records are read from the paths the CSV (data.csv) gives; no manual_dir."

    @classmethod
    def tasks(cls) -> tuple[str, ...]:
        return (TASK,)

    def __init__(
        self,
        *,
        csv_path: str | os.PathLike,
        window_s: float = 0.0,
        stride_s: float = 0.0,
        default_fs: float = 0.0,
        config: str | BuilderConfig | None = None,
        num_workers: int | None = None,
        allow_missing_records: bool = False,
        **kwargs,
    ):
        """`csv_path`: the CSV; `window_s`/`stride_s`: seconds (0 = the sentence's window / the
        window); `default_fs`: the rate of `.npy` records without an `fs` column."""
        base = (
            {c.name: c for c in self.BUILDER_CONFIGS}[config or self.DEFAULT_CONFIG_NAME]
            if not isinstance(config, BuilderConfig)
            else config
        )
        self._table = read_table(csv_path, default_fs, allow_missing_records)
        self._window_s = window_s or base.spec.max_duration_s
        self._stride_s = stride_s or self._window_s
        key = cache_key(self._table, self._window_s, self._stride_s, default_fs)
        hashed = BuilderConfig(
            name=f"{base.name}_csv{key}", leads=base.leads, detector=base.detector, description=base.description
        )
        self._num_workers = num_workers or os.cpu_count() or 1
        super().__init__(config=hashed, **sentences.with_default_file_format(kwargs))

    def _info(self) -> tfds.core.DatasetInfo:
        classes = {TASK: list(self._table.classes)}
        spec = self.builder_config.spec
        features = {
            **sentences.sentence_features(spec),
            "record_id": np.int32,
            "window": np.int32,
            "num_windows": np.int32,
            **sentences.task_features(classes),
        }
        metadata = sentences.base_metadata(classes, spec)
        metadata["csv"] = {
            "path": os.fspath(self._table.path.absolute()),
            "window_s": self._window_s,
            "stride_s": self._stride_s,
            "split_given": self._table.split_given,
            "split_seed": None if self._table.split_given else SPLIT_SEED,
        }
        # The record of each CSV row, by record_id (0-based row).
        metadata["records"] = [row.record for row in self._table.rows]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), supervised_keys=None, metadata=metadata
        )

    def _split_generators(self, dl_manager):
        spec = self.builder_config.spec
        rows = self._table.rows
        train = [row.source for row in rows if row.split == "train"]
        mean, std = sentence_corpus.amplitude_moments(train, spec, self._num_workers)
        self.info.metadata["amplitude"] = {"mean": mean, "std": std, "fitted_on": "the CSV's training rows"}
        self.info.metadata["windows"] = {"records": 0, "windows": 0, "cut": 0}
        self._log = sentences.BuildLog(self.info.metadata, id_field="row")
        logging.info(
            "Amplitude standardization fitted on %d training records: mean=%.5f std=%.5f", len(train), mean, std
        )
        return {
            split: self._generate_examples(split, [r for r in rows if r.split == split], spec, mean, std)
            for split in SPLITS
        }

    def _generate_examples(self, split, rows, spec, mean, std) -> Iterator:
        by_index = dict(enumerate(rows))
        record_id = {row.number: row.number - 1 for row in rows}
        items = [(i, row.source) for i, row in by_index.items()]
        results = sentence_corpus.tokenize_windows(
            items, spec, mean, std, self._num_workers, self._window_s, self._stride_s
        )
        kept = windows_total = cut = 0
        for i, windows, extra in results:
            row = by_index[i]
            if windows is None:
                self._log.skip(row.number, extra)
                continue
            good = [(w, sentence) for w, sentence, reason in windows if sentence is not None]
            for w, _, reason in windows:
                if reason is not None:
                    logging.warning("row %d window %d of %s: skipped: %s", row.number, w, row.record, reason.message)
            if not good:
                self._log.skip(row.number, next(reason for _, _, reason in windows if reason is not None))
                continue
            if len(windows) > 1:
                cut += 1
                logging.info("row %d (%s, %.1f s): %d windows", row.number, row.record, extra, len(windows))
            kept += 1
            windows_total += len(good)
            for w, sentence in good:
                self._log.sentence(row.number, sentence)
                yield (
                    f"{row.number}:{w}",
                    {
                        **sentences.sentence_fields(sentence),
                        "record_id": record_id[row.number],
                        "window": w,
                        "num_windows": len(good),
                        TASK: row.labels,
                    },
                )
        counts = self.info.metadata["windows"]
        counts.update(
            records=counts["records"] + kept, windows=counts["windows"] + windows_total, cut=counts["cut"] + cut
        )
        logging.info(
            "csv %s split: %d records -> %d windows of %g s every %g s (%d records longer than one window)",
            split,
            kept,
            windows_total,
            self._window_s,
            self._stride_s,
            cut,
        )
        if not kept:
            raise ValueError(f"all {len(rows)} records of the {split} split were skipped (see the warnings above)")
