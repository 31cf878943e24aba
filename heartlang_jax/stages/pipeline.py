"""One command, one workdir: build the dataset, learn the vocabulary, pre-train, run the sweep.

    <workdir>/tfds      the dataset, built once and read by every stage
    <workdir>/vqhbr     VQ-HBR, the tokenizer (its checkpoint gives pre-training its targets)
    <workdir>/pretrain  masked pre-training (vqhbr_workdir set to <workdir>/vqhbr)
    <workdir>/sweep     the downstream grid (init_workdir set to <workdir>/pretrain)

Rerunning the command resumes: each stage restores its newest checkpoint (a finished stage
restores its last one and trains no further step), and the sweep skips its finished cells.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.evaluation import report
from heartlang_jax.stages import common, pretrain, sweep, vqhbr
from heartlang_jax.training import checkpointing


def run(config: schema.PipelineStage, workdir: str | os.PathLike) -> str:
    """Runs every stage in order; returns the sweep's Markdown table."""
    config = schema.validate(config)  # a bad grid fails now, not after pre-training
    workdir = checkpointing.absolute(workdir)
    dirs = {name: workdir / name for name in ("vqhbr", "pretrain", "sweep")}
    data = dataclasses.replace(config.data, tfds_dir=os.fspath(common.tfds_dir(config.data, workdir).absolute()))
    builder, _ = common.open_dataset(data, workdir)
    print(input_pipeline.summarize(builder), flush=True)

    logging.info("[pipeline] vqhbr in %s", dirs["vqhbr"])
    vqhbr.train_and_evaluate(dataclasses.replace(config.vqhbr, data=data), dirs["vqhbr"])
    logging.info("[pipeline] pretrain in %s", dirs["pretrain"])
    pretrain_config = dataclasses.replace(config.pretrain, data=data, vqhbr_workdir=os.fspath(dirs["vqhbr"]))
    pretrain.train_and_evaluate(pretrain_config, dirs["pretrain"])
    logging.info("[pipeline] sweep in %s", dirs["sweep"])
    sweep.run(dataclasses.replace(config.sweep, data=data, init_workdir=os.fspath(dirs["pretrain"])), dirs["sweep"])
    print(_where(workdir, data.tfds_dir, dirs), flush=True)
    return (dirs["sweep"] / report.RESULTS_MD).read_text()


def _where(workdir, tfds_dir: str, dirs: dict) -> str:
    return "\n".join(
        [
            f"Pipeline finished in {workdir}",
            f"  dataset:     {tfds_dir}",
            f"  checkpoints: {dirs['vqhbr'] / checkpointing.CHECKPOINT_DIR} (vocabulary), "
            f"{dirs['pretrain'] / checkpointing.CHECKPOINT_DIR} (pre-trained encoder)",
            f"  logs:        tensorboard --logdir {workdir}   (and metrics.jsonl in each stage's folder)",
            f"  results:     {dirs['sweep'] / report.RESULTS_MD}, {dirs['sweep'] / report.RESULTS_JSON}, "
            f"per-run result.json and logs under {dirs['sweep'] / sweep.CELLS_DIR}",
        ]
    )
