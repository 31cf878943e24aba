"""Build a TFDS dataset of ECG sentences (`data.dataset`, and those of `data.mixture`) and print its summary.

    python -m heartlang_jax.main --config=configs/dataset.py --workdir=runs/data
    python -m heartlang_jax.main --config=configs/dataset.py --workdir=runs/data \
        --config.data.manual_dirs.ptbxl=/path/to/ptb-xl-1.0.3
    python -m heartlang_jax.main --config=configs/dataset.py --workdir=runs/data \
        --config.data.dataset=csn --config.data.manual_dirs.csn=/path/to/ecg-arrhythmia
"""

import ml_collections

from heartlang_jax.configs import common


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "dataset"
    config.data = common.data_config()
    return config
