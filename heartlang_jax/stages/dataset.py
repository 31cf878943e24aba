"""The `dataset` stage: build the TFDS dataset (tokenizing every record) and print its summary."""

from __future__ import annotations

import os

import ml_collections

from heartlang_jax import input_pipeline
from heartlang_jax.stages import common


def build_and_summarize(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    builder, _ = common.open_dataset(config, workdir)
    summary = input_pipeline.summarize(builder)
    print(summary, flush=True)
    return summary
