"""The `dataset` stage: build the TFDS dataset(s) (tokenizing every record) and print the summary.

It builds `config.data.dataset` and every dataset of `config.data.mixture`.
"""

from __future__ import annotations

import os

from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import common


def build_and_summarize(config: schema.DatasetStage, workdir: str | os.PathLike) -> str:
    config = schema.validate(config)  # a ConfigDict from a notebook is judged here; a typed one passes
    summary = "\n".join(
        input_pipeline.summarize(common.open_dataset(config.data, workdir, name)[0]) for name in config.data.datasets()
    )
    print(summary, flush=True)
    return summary
