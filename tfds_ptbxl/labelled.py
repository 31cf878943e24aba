"""A labelled ECG-sentence builder driven by a split file (CPSC 2018, Chapman-Shaoxing-Ningbo).

The split file (`split_files`) says which record is in which split and its multi-hot labels; the
dataset's own folder (`manual_dir`) holds the signals. A dataset subclass says where a record's
files sit (`_record_path`), what the folder must hold (`_check_layout`), and its one task's name.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from heartlang_jax.ecg import sentence_corpus
from tfds_ptbxl import sentences, split_files
from tfds_ptbxl.sentences import BuilderConfig


def builder_configs(dataset: str) -> list[BuilderConfig]:
    return [
        BuilderConfig(name="leads12", description="All 12 standard leads, resampled to 100 Hz."),
        BuilderConfig(name="leads1", leads=("I",), description="Lead I only."),
        BuilderConfig(
            name="leads12_xqrs",
            detector="xqrs",
            description="All 12 leads, beats found by XQRS on lead I (the paper's).",
        ),
        sentences.released_config(dataset),
    ]


def record_number(record: str) -> int:
    """The number in a record's name (A0001 -> 1, .../JS00001 -> 1), stored as `record_id`."""
    digits = re.findall(r"\d+", pathlib.PurePosixPath(record).name)
    return int(digits[-1]) if digits else -1


class SplitFileBuilder:
    """Mixin for `tfds.core.GeneratorBasedBuilder`: see the module docstring."""

    TASK: str  # the name of the dataset's one multi-hot task
    # Provided by tfds.core.GeneratorBasedBuilder, which the builder also subclasses.
    builder_config: Any
    dataset_info_from_configs: Any

    @classmethod
    def tasks(cls) -> tuple[str, ...]:
        return (cls.TASK,)

    SPLIT_FILE: pathlib.Path  # shipped beside the builder
    HOMEPAGE: str
    FITTED_ON = "train split of the released split file"

    def __init__(
        self,
        *,
        split_file: str | os.PathLike | None = None,
        num_workers: int | None = None,
        allow_missing_records: bool = False,
        **kwargs,
    ):
        """`split_file` replaces the shipped split file (same columns; e.g. a subset for a test).
        `allow_missing_records`: build without the records the folder lacks (logged by name)."""
        self._allow_missing = allow_missing_records
        self._split_file = pathlib.Path(split_file) if split_file else self.SPLIT_FILE
        self._num_workers = num_workers or os.cpu_count() or 1
        super().__init__(**sentences.with_default_file_format(kwargs))

    # --- what a dataset says -------------------------------------------------------------------

    def _check_layout(self, root: pathlib.Path) -> None:
        raise NotImplementedError

    def _record_paths(self, root: pathlib.Path, records: list[str]) -> dict[str, pathlib.Path]:
        """Path (no extension) of each record whose files are present."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        classes = {self.TASK: split_files.read(self.SPLIT_FILE)[0]}
        spec = self.builder_config.spec
        features = {**sentences.sentence_features(spec), "record_id": np.int32, **sentences.task_features(classes)}
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            homepage=self.HOMEPAGE,
            metadata=sentences.base_metadata(classes, spec),
        )

    def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
        self._manual_root = sentences.manual_root(dl_manager, download_config)
        return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        root = self._manual_root
        self._check_layout(root)
        classes, rows = split_files.read(self._split_file)
        if list(classes) != self.info.metadata["classes"][self.TASK]:
            raise ValueError(f"{self._split_file}: classes {classes} differ from {self.name}'s")
        paths = self._record_paths(root, [row.record for row in rows])
        missing = [row.record for row in rows if row.record not in paths]
        sentences.check_missing_records(
            self.name, root, missing, len(rows), self._allow_missing, one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        )
        rows = [row for row in rows if row.record in paths]
        by_split = {split: [row for row in rows if row.split == split] for split in split_files.SPLITS}
        for split, members in by_split.items():
            if not members:
                raise ValueError(f"{self._split_file} has no record in the {split} split")
        spec = self.builder_config.spec
        train = [paths[row.record] for row in by_split["train"]]
        mean, std = sentence_corpus.amplitude_moments(train, spec, self._num_workers)
        self.info.metadata["amplitude"] = {"mean": mean, "std": std, "fitted_on": self.FITTED_ON}
        self._log = sentences.BuildLog(self.info.metadata, id_field="record")
        logging.info(
            "Amplitude standardization fitted on %d training records: mean=%.5f std=%.5f", len(train), mean, std
        )
        return {
            split: self._generate_examples(split, members, paths, spec, mean, std)
            for split, members in by_split.items()
        }

    def _generate_examples(self, split, rows, paths, spec, mean, std):
        by_record = {row.record: row for row in rows}
        items = [(row.record, paths[row.record]) for row in rows]
        kept = 0
        for record, sentence, error in sentence_corpus.tokenize_records(items, spec, mean, std, self._num_workers):
            if error is not None:
                self._log.skip(record, error)
                continue
            kept += 1
            self._log.sentence(record, sentence)
            example = {
                **sentences.sentence_fields(sentence),
                "record_id": record_number(record),
                self.TASK: by_record[record].labels,
            }
            yield record, example
        if not kept:
            raise ValueError(f"all {len(rows)} records of the {split} split were skipped (see the warnings above)")


def one_line(text: str) -> str:
    return " ".join(text.split())
