"""Entry point: `python -m heartlang_jax.main --config=configs/<stage>.py[:variant] --workdir=DIR`.

Parses flags, starts multi-process JAX when there are several processes, logs the devices and
hands over to one library function per stage, so that a notebook can call the same functions.

Multi-process settings come from `--coordinator_address`, `--num_processes` and `--process_id`,
else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; what they leave unset
JAX's `jax.distributed.initialize()` detects (TPU VM pods, GKE, Kubernetes, SLURM, Open MPI,
mpi4py), and with neither the run is one process (`parallel.initialize_distributed`). Errors in the user's input (the project's own
error types) print as one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from heartlang_jax import errors
from heartlang_jax.configs import command_line as cli_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
    """Orbax logs every file of every save at INFO; keep its warnings, drop the chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    del argv
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    from heartlang_jax import stages
    from heartlang_jax.training import parallel, train_loop

    try:
        parallel.initialize_distributed(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
        )
        config = _CONFIG.value
        logging.info(
            "JAX %s, process %d/%d, %d devices: %s",
            jax.__version__,
            jax.process_index(),
            jax.process_count(),
            jax.device_count(),
            jax.devices(),
        )
        stages.run(config, _WORKDIR.value)
    except train_loop.Preempted as e:
        logging.warning("%s", e)
    except errors.HeartLangError as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


def run():
    app.run(main, flags_parser=cli_flags.parse_flags)


if __name__ == "__main__":
    run()
