"""The datasets a config may name (`config.data.dataset`), without building or opening one.

Config validation asks it which tasks and builder configs a dataset has; the loader asks it for
the builder class. Importing a builder module registers it with TFDS.
"""

from __future__ import annotations

import importlib
from typing import Any

# dataset name -> module of its builder (class `Builder`)
BUILDER_MODULES = {
    "ptbxl": "tfds_ptbxl.ptbxl.ptbxl_dataset_builder",
    "cpsc2018": "tfds_ptbxl.cpsc2018.cpsc2018_dataset_builder",
    "csn": "tfds_ptbxl.csn.csn_dataset_builder",
    "mimic_iv_ecg": "tfds_ptbxl.mimic_iv_ecg.mimic_iv_ecg_dataset_builder",
    # The user's own records and labels, listed in a CSV (`data.csv`), not a published folder.
    "csv": "tfds_ptbxl.csv_labels.csv_labels_dataset_builder",
}
DATASETS = tuple(BUILDER_MODULES)
# The datasets read from a folder in their own published layout (`data.manual_dirs.<name>`).
FOLDER_DATASETS = tuple(name for name in DATASETS if name != "csv")


def builder_class(dataset: str) -> Any:
    if dataset not in BUILDER_MODULES:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return importlib.import_module(BUILDER_MODULES[dataset]).Builder


def tasks(dataset: str) -> tuple[str, ...]:
    """The multi-hot label tasks of `dataset` (empty for an unlabelled one)."""
    return tuple(builder_class(dataset).tasks())


def builder_configs(dataset: str) -> tuple[str, ...]:
    return tuple(c.name for c in builder_class(dataset).BUILDER_CONFIGS)
