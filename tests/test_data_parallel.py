"""8 simulated devices and 1 device give the same parameters and codebook (data parallelism by sharding)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(devices: int, out: pathlib.Path) -> dict[str, np.ndarray]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/parallel_steps.py"), str(out)], env=env, check=True, cwd=ROOT
    )
    return dict(np.load(out))


def test_eight_devices_match_one(tmp_path):
    eight = _run(8, tmp_path / "eight.npz")
    one = _run(1, tmp_path / "one.npz")
    assert int(eight.pop("device_count")) == 8 and int(one.pop("device_count")) == 1
    assert set(eight) == set(one)
    assert any("codebook" in k for k in eight) and any(k.startswith("pretrain") for k in eight)
    for key in sorted(eight):
        np.testing.assert_allclose(eight[key], one[key], atol=1e-5, rtol=0, err_msg=key)
