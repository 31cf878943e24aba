"""The downstream grid of paper Tables 1-2, run cell by cell (reported by `evaluation.report`).

Each cell (task, label fraction, mode, seed, init) is one fine-tuning run in its own workdir
`<workdir>/cells/<name>/`. A cell whose `result.json` exists is finished and skipped, so an
interrupted sweep is resumed by rerunning the same command (an unfinished cell resumes from its
own checkpoint). `results.json` and `results.md` are rewritten after every cell. The grid and
the pre-training run are checked before the first cell trains.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os

import jax

from heartlang_jax import stages
from heartlang_jax.configs import schema
from heartlang_jax.evaluation import report
from heartlang_jax.inference import model_info
from heartlang_jax.models import ECGFormerConfig
from heartlang_jax.stages import common, finetune
from heartlang_jax.training import checkpointing, parallel

CELLS_DIR = "cells"


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    label_fraction: float
    mode: schema.FinetuneMode
    init: schema.SweepInit
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}_{self.label_fraction * 100:g}pct_{self.mode}_{self.init}_seed{self.seed}"


def cells(config: schema.SweepStage) -> list[Cell]:
    """The grid, in the order it runs (all cheap linear cells of a task before its full ones)."""
    grid = itertools.product(config.tasks, config.modes, config.label_fractions, config.inits, config.seeds)
    return [Cell(task, float(f), mode, init, int(seed)) for task, mode, f, init, seed in grid]


def cell_config(
    config: schema.SweepStage, cell: Cell, tfds_dir: str, encoder: ECGFormerConfig | None
) -> schema.FinetuneStage:
    """The fine-tuning config of one cell; its dataset is the sweep's (built once, shared)."""
    return dataclasses.replace(
        config.finetune,
        stage=stages.name_of(schema.FinetuneStage),
        data=dataclasses.replace(config.data, tfds_dir=tfds_dir),
        task=cell.task,
        mode=cell.mode,
        label_fraction=cell.label_fraction,
        seed=cell.seed,
        init_workdir=os.fspath(checkpointing.absolute(config.init_workdir)) if cell.init == "pretrained" else "",
        encoder=config.finetune.encoder if encoder is None else encoder,
    )


def _random_init_encoder(config: schema.SweepStage) -> ECGFormerConfig | None:
    """Random-init cells copy the pre-trained run's architecture, so both rows compare like with like.

    Dropout stays the fine-tuning config's, as it does for the pre-trained cells; what the cell's
    stage derives from the dataset and config.dtype is left at its defaults.
    """
    if not config.init_workdir:
        return None
    fields = dict(model_info.read(checkpointing.absolute(config.init_workdir)).model["encoder"])
    fields = {k: v for k, v in fields.items() if k not in ECGFormerConfig.DERIVED}
    fields.update({name: getattr(config.finetune.encoder, name) for name in finetune.REGULARIZATION_FIELDS})
    return ECGFormerConfig(**fields)


def run(config: schema.SweepStage, workdir: str | os.PathLike) -> list[dict]:
    """Runs every unfinished cell, then writes and prints the results table."""
    config = schema.validate(config)  # a ConfigDict from a notebook is judged here; a typed one passes
    workdir = checkpointing.absolute(workdir)
    grid = cells(config)
    if "pretrained" in config.inits:
        model_info.read(checkpointing.absolute(config.init_workdir))  # fails before the first cell
    tfds_dir = os.fspath(common.tfds_dir(config.data, workdir).absolute())
    encoder = _random_init_encoder(config)
    configs = {cell: cell_config(config, cell, tfds_dir, encoder if cell.init == "random" else None) for cell in grid}
    results, table = [], ""
    intervals: dict = {}  # bootstrap intervals by their cells' score files: each computed once per sweep
    for i, cell in enumerate(grid):
        cell_dir = workdir / CELLS_DIR / cell.name
        result_path = cell_dir / finetune.RESULT_FILE
        if result_path.exists():
            logging.info("[sweep] cell %d/%d %s: finished earlier, skipped", i + 1, len(grid), cell.name)
        else:
            logging.info("[sweep] cell %d/%d %s", i + 1, len(grid), cell.name)
            finetune.train_and_evaluate(configs[cell], cell_dir)
            if not config.keep_cell_checkpoints:
                parallel.barrier(f"heartlang_jax.stages.sweep.{cell.name}")
                if jax.process_index() == 0:
                    (cell_dir / checkpointing.CHECKPOINT_DIR).rmtree(missing_ok=True)
        result = {"cell": cell.name, "init_kind": cell.init, **json.loads(result_path.read_text())}
        if (cell_dir / finetune.TEST_SCORES_FILE).exists():  # cells finished before it was saved have none
            result["test_scores"] = os.fspath(cell_dir / finetune.TEST_SCORES_FILE)
        results.append(result)
        table = report.write_results(config, workdir, results, intervals)  # after every cell: partial results survive
    print(table, flush=True)
    return results
