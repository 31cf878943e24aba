"""Build the `ptbxl` TFDS dataset of ECG sentences and print its summary.

    python -m heartlang_jax.main --config=configs/dataset.py --workdir=runs/data
    python -m heartlang_jax.main --config=configs/dataset.py --workdir=runs/data \
        --config.data.ptbxl_dir=/path/to/ptb-xl-1.0.3
"""

import ml_collections

from heartlang_jax.configs import common


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Which stage main.py runs.
    config.stage = "dataset"
    config.data = common.data_config()
    return config
