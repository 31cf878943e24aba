"""The stages, in the order data flows, and the one table of them.

`STAGES` is the only list of stage names: `main` runs the function a config's `stage` names,
`configs.schema.validate` reads the config into that stage's typed schema, and the run folders
(`model.json`'s kind) accept the stages that train a model. Adding a stage is one entry here (its
schema in `configs/schema.py`, its module beside this file, a config file in `configs/`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from heartlang_jax.configs import schema


@dataclasses.dataclass(frozen=True)
class Stage:
    # The typed config a config file of this stage is read into.
    schema: type
    # "module:function", called as function(typed_config, workdir); imported when run.
    entry: str
    # Whether its run folder holds a model (model.json + checkpoints) that a later stage or
    # `heartlang_jax.load` reads.
    trains_model: bool

    def function(self) -> Callable[[Any, Any], Any]:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {
    "dataset": Stage(schema.DatasetStage, "heartlang_jax.stages.dataset:build_and_summarize", trains_model=False),
    "vqhbr": Stage(schema.VQHBRStage, "heartlang_jax.stages.vqhbr:train_and_evaluate", trains_model=True),
    "pretrain": Stage(schema.PretrainStage, "heartlang_jax.stages.pretrain:train_and_evaluate", trains_model=True),
    "finetune": Stage(schema.FinetuneStage, "heartlang_jax.stages.finetune:train_and_evaluate", trains_model=True),
    "sweep": Stage(schema.SweepStage, "heartlang_jax.stages.sweep:run", trains_model=False),
    "pipeline": Stage(schema.PipelineStage, "heartlang_jax.stages.pipeline:run", trains_model=False),
}
# The stages whose run folders hold a model (model.json's `kind`).
MODEL_KINDS = tuple(name for name, stage in STAGES.items() if stage.trains_model)


def name_of(schema_type: type) -> str:
    """The stage whose typed config is `schema_type`."""
    (name,) = [name for name, stage in STAGES.items() if stage.schema is schema_type]
    return name


def run(config, workdir) -> Any:
    """Validates `config` (a ConfigDict from the command line, or a typed config) and runs its stage."""
    typed = schema.validate(config)
    return STAGES[name_of(type(typed))].function()(typed, workdir)
