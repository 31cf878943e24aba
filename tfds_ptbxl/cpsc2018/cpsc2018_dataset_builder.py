"""CPSC 2018 (China Physiological Signal Challenge 2018) as HeartLang ECG sentences.

6,877 12-lead records of 6-60 s at 500 Hz, 9 classes (normal and 8 abnormal types), split into
train/validation/test exactly as HeartLang's released split files (`icbeb_{train,val,test}.csv`,
shipped here as `splits.csv.gz`) say, with their label columns.
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from heartlang_jax import errors
from tfds_ptbxl import labelled


class Builder(labelled.SplitFileBuilder, tfds.core.GeneratorBasedBuilder):
    """CPSC 2018 as HeartLang ECG sentences, with HeartLang's released split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ECG sentences from the QRSTokenizer, the released split and 9 rhythm classes."}
    BUILDER_CONFIGS = labelled.builder_configs("cpsc2018")
    DEFAULT_CONFIG_NAME = "leads12"
    TASK = "rhythm"
    SPLIT_FILE = pathlib.Path(__file__).parent / "splits.csv.gz"
    HOMEPAGE = "http://2018.icbeb.org/Challenge.html"
    FITTED_ON = "train split of HeartLang's released CPSC 2018 split (icbeb_train.csv)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the CPSC 2018 training set in `manual_dir`: the records A0001 ... A6877 as the challenge
    published them, `A0001.mat` (a struct 'ECG' with 'data' in mV), either directly in the folder
    or in its `TrainingSet1/`, `TrainingSet2/`, `TrainingSet3/` subfolders; the PhysioNet/CinC 2020
    copy (`A0001.hea` + `A0001.mat`) is read as well.
    """

    def _check_layout(self, root: pathlib.Path) -> None:
        if not root.is_dir():
            raise errors.DatasetLayoutError(
                f"CPSC 2018 folder {root} does not exist. {labelled.one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
            )

    def _record_paths(self, root: pathlib.Path, records: list[str]) -> dict[str, pathlib.Path]:
        found = {p.stem: p.with_suffix("") for p in [*root.glob("A*.mat"), *root.glob("*/A*.mat")]}
        return {record: found[record] for record in records if record in found}
