"""What every stage needs: its dataset, its compute dtype, its model config as a dataclass."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import jax
import ml_collections
from flax import nnx

from heartlang_jax import input_pipeline
from heartlang_jax.models import ECGFormerConfig


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """"auto" = bfloat16 on GPU/TPU, float32 on CPU (where bf16 matmuls are emulated)."""
    if config.dtype != "auto":
        return config.dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def ecgformer_config(encoder: ml_collections.ConfigDict, dtype: str, **overrides) -> ECGFormerConfig:
    """The model dataclass from a config block; unknown fields fail with their name."""
    fields = {f.name for f in dataclasses.fields(ECGFormerConfig)}
    values = {**encoder.to_dict(), **overrides, "dtype": dtype}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown ECGFormer config field(s) {unknown}; known: {sorted(fields)}")
    return ECGFormerConfig(**values)


def tfds_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(config.data.tfds_dir or pathlib.Path(workdir) / "tfds")


def open_dataset(config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    """Builds the dataset if needed; returns (builder, {split: data source})."""
    data = config.data
    builder = input_pipeline.prepare_dataset(
        tfds_dir(config, workdir),
        builder_config=data.builder_config,
        ptbxl_dir=data.ptbxl_dir or None,
        num_workers=data.num_workers or None,
    )
    logging.info("%s", input_pipeline.summarize(builder))
    return builder, builder.as_data_source()


def parameter_count(model: nnx.Module) -> int:
    """Trainable parameters (`nnx.Param`; the codebook and RNG state are not counted)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def log_parameter_count(name: str, model: nnx.Module) -> None:
    logging.info("[%s] %s parameters", name, f"{parameter_count(model):,}")
