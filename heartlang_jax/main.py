"""Entry point: `python -m heartlang_jax.main --config=configs/<stage>.py[:variant] --workdir=DIR`.

Parses flags, starts multi-host JAX when there are several hosts, logs the devices and hands over
to one library function per stage, so that a notebook can call the same functions.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from heartlang_jax import config_validation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])

# stage name -> "module:function(config, workdir)"
STAGES = {
    "dataset": "heartlang_jax.stages.dataset:build_and_summarize",
    "vqhbr": "heartlang_jax.stages.vqhbr:train_and_evaluate",
    "pretrain": "heartlang_jax.stages.pretrain:train_and_evaluate",
    "finetune": "heartlang_jax.stages.finetune:train_and_evaluate",
    "sweep": "heartlang_jax.sweep:run",
    "pipeline": "heartlang_jax.pipeline:run",
}


def stage_function(stage: str):
    if stage not in STAGES:
        raise ValueError(f"config.stage must be one of {sorted(STAGES)}, got {stage!r}")
    module, function = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), function)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe a problem with the inputs: shown as one message, without a traceback."""
    from heartlang_jax import checkpointing, ptbxl, train_loop
    from tfds_ptbxl.ptbxl import physionet

    return (
        checkpointing.CheckpointError,
        ptbxl.DatasetLayoutError,
        physionet.DownloadError,
        train_loop.NonFiniteError,
        ValueError,
        KeyError,
        AttributeError,
    )


class _QuietLibraries(logging.Filter):
    """Orbax logs every file of every save at INFO; keep its warnings, drop the chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    del argv
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()
    config = _CONFIG.value
    logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(), jax.process_count(), jax.devices())
    from heartlang_jax import train_loop

    try:
        config_validation.validate(config)
        stage_function(config.stage)(config, _WORKDIR.value)
    except train_loop.Preempted as e:
        logging.warning("%s", e)
    except _user_errors() as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


def run():
    app.run(main, flags_parser=config_validation.parse_flags)


if __name__ == "__main__":
    run()
