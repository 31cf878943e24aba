"""The `dataset` stage: build the TFDS dataset(s) (tokenizing every record) and print the summary.

It builds `config.data.dataset` and every dataset of `config.data.mixture`.
"""

from __future__ import annotations

import os

import ml_collections

from heartlang_jax.configs import schema as stage_configs
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import common


def build_and_summarize(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    stage_configs.validate(config)  # every field judged before any data is read or workdir claimed
    names = [config.data.dataset]
    names += [name for name, _ in input_pipeline.parse_mixture(config.data.mixture) if name not in names]
    summary = "\n".join(input_pipeline.summarize(common.open_dataset(config, workdir, name)[0]) for name in names)
    print(summary, flush=True)
    return summary
