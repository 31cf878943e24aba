"""Chapman-Shaoxing-Ningbo (CSN) as HeartLang ECG sentences.

PhysioNet's "A large scale 12-lead electrocardiogram database for arrhythmia study" 1.0.0
(`ecg-arrhythmia`): 45,152 10 s, 12-lead records at 500 Hz. HeartLang's released split files
(`chapman_{train,val,test}.csv`, shipped here as `splits.csv.gz`) keep 23,026 of them, with 38
label columns; their split membership and labels are used as they are.
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from heartlang_jax import errors
from tfds_ptbxl import labelled


class Builder(labelled.SplitFileBuilder, tfds.core.GeneratorBasedBuilder):
    """Chapman-Shaoxing-Ningbo as HeartLang ECG sentences, with HeartLang's released split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ECG sentences from the QRSTokenizer, the released split and its 38 classes."}
    BUILDER_CONFIGS = labelled.builder_configs("csn")
    DEFAULT_CONFIG_NAME = "leads12"
    TASK = "diagnosis"
    SPLIT_FILE = pathlib.Path(__file__).parent / "splits.csv.gz"
    HOMEPAGE = "https://physionet.org/content/ecg-arrhythmia/1.0.0/"
    FITTED_ON = "train split of HeartLang's released CSN split (chapman_train.csv)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the extracted PhysioNet 'ecg-arrhythmia' 1.0.0 folder
    (https://physionet.org/content/ecg-arrhythmia/1.0.0/) in `manual_dir`, so that it holds
    WFDBRecords/NN/NNN/JSnnnnn.hea and .mat.
    """

    def _check_layout(self, root: pathlib.Path) -> None:
        how = labelled.one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if not root.is_dir():
            raise errors.DatasetLayoutError(f"CSN folder {root} does not exist. {how}")
        if not (root / "WFDBRecords").is_dir():
            raise errors.DatasetLayoutError(f"CSN folder {root} is incomplete: missing WFDBRecords/. {how}")

    def _record_paths(self, root: pathlib.Path, records: list[str]) -> dict[str, pathlib.Path]:
        paths = {record: root / record for record in records}
        return {r: p for r, p in paths.items() if p.with_suffix(".hea").is_file() and p.with_suffix(".mat").is_file()}
