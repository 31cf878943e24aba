"""8 simulated devices and 1 device give the same parameters and codebook (data parallelism by sharding)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _start(devices: int, out: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/scripts/parallel_steps.py"), str(out)], env=env, cwd=ROOT
    )


def _result(process: subprocess.Popen, out: pathlib.Path) -> dict[str, np.ndarray]:
    assert process.wait(timeout=600) == 0, f"{out.stem}: exit {process.returncode}"
    return dict(np.load(out))


def test_eight_devices_match_one(tmp_path):
    # Both at once: each spends much of its time importing and compiling, which overlap on 2 cores.
    runs = {
        name: (_start(devices, tmp_path / f"{name}.npz"), tmp_path / f"{name}.npz")
        for name, devices in (("eight", 8), ("one", 1))
    }
    eight, one = (_result(*runs[name]) for name in ("eight", "one"))
    assert int(eight.pop("device_count")) == 8 and int(one.pop("device_count")) == 1
    assert set(eight) == set(one)
    assert any("codebook" in k for k in eight) and any(k.startswith("pretrain") for k in eight)
    for key in sorted(eight):
        np.testing.assert_allclose(eight[key], one[key], atol=1e-5, rtol=0, err_msg=key)
