"""Launching with JAX's own cluster detection: no flags, one machine, one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What main.py does first, then what the run would see.
SNIPPET = (
    "import json, jax; from heartlang_jax.training import parallel; started = parallel.initialize_distributed(); "
    "print(json.dumps({'started': started, 'processes': jax.process_count(), 'index': jax.process_index(), "
    "'initialized': jax.distributed.is_initialized()}))"
)


def _launch(extra_env: dict, timeout: int = 120) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_", "PMI", "TPU_"))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **extra_env)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def test_no_cluster_and_no_flags_is_one_process_without_a_coordinator():
    result, _ = _launch({})
    assert result == {"started": False, "processes": 1, "index": 0, "initialized": False}


@pytest.mark.slow
def test_a_one_task_slurm_job_is_detected_by_jax_and_runs_as_one_process():
    """A SLURM step of one task: JAX's SlurmCluster supplies the coordinator (this host), the
    process count and id; jax.distributed starts and the run is one process."""
    job = random.randrange(1, 1 << 20)  # the coordinator port JAX derives from the job id
    env = {
        "SLURM_JOB_ID": str(job),
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NUM_NODES": "1",
    }
    result, seconds = _launch(env)
    assert result == {"started": True, "processes": 1, "index": 0, "initialized": True}
    assert seconds < 100  # not the 300 s initialization timeout


def test_incomplete_settings_where_no_cluster_is_detected_are_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_"))}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2")
    code = "from heartlang_jax.training import parallel; parallel.initialize_distributed()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "ConfigError: multi-process launch needs --coordinator_address" in out.stderr
