"""Faults and hostile input, tried as an unlucky user or an attacker would (issue 21).

Each test is named for the numbered point of the issue it covers (`test_p<N>_...`).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import synthetic
from flax import nnx
from test_inference import write_run

import heartlang_jax
from heartlang_jax import checkpointing, input_pipeline, optim, parallel, train_loop, workdir_lock
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.stages import vqhbr

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = synthetic.sentences(48, seed=0)


def _config(steps: int):
    config = vqhbr_config.get_config("tiny")
    config.num_train_steps = steps
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 2
    config.dtype = "float32"
    return config


def _run(workdir, steps: int, *, evaluate=None, total_steps: int = 6):
    config = _config(steps)
    model = vqhbr.build_model(config)
    tx = optim.make_optimizer(config.optimizer, num_train_steps=total_steps, warmup_steps=1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return train_loop.run(
        stage="vqhbr",
        config=config,
        workdir=str(workdir),
        model=model,
        optimizer=optimizer,
        train_step=vqhbr.train_step,
        train_data=input_pipeline.train_dataset(SOURCE, global_batch=8, seed=0),
        mesh=parallel.make_mesh(),
        schedule=train_loop.Schedule.from_config(config, len(SOURCE), 8),
        evaluate=evaluate,
    )


# --- 1. unreadable checkpoint steps ---------------------------------------------------------------


def test_p1_unreadable_step_is_moved_aside_and_the_rerun_continues(tmp_path, caplog):
    _run(tmp_path, 4)  # steps 2 and 4
    directory = tmp_path / checkpointing.CHECKPOINT_DIR
    shutil.rmtree(directory / "4" / "model")  # a finalized step whose files were lost
    with caplog.at_level(logging.WARNING):
        result = _run(tmp_path, 6)  # resumes at 2, reaches 4 again: no StepAlreadyExistsError
    assert result.step == 6
    aside = tmp_path / checkpointing.UNREADABLE_DIR / "4"
    assert aside.is_dir() and not (aside / "model").exists()
    assert any("step 4" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)
    store = checkpointing.RunCheckpoints(tmp_path, read_only=True)
    assert store.steps()[-1] == 6
    store.close()


def test_p1_load_names_the_unreadable_step(tmp_path):
    run = write_run(tmp_path / "run", "pretrain")  # its checkpoint is step 7
    # The array data is lost, its metadata (shapes) is intact: the shape check passes, the read fails.
    for data in (run / checkpointing.CHECKPOINT_DIR / "7" / "model" / "ocdbt.process_0" / "d").iterdir():
        data.write_bytes(b"\0garbage")
    with pytest.raises(checkpointing.CheckpointError, match="checkpoint step 7 .*is unreadable"):
        heartlang_jax.load(run)


# --- 3. torch.load(weights_only=True) -------------------------------------------------------------


def test_p3_released_checkpoints_are_unpickled_with_weights_only(tmp_path, monkeypatch):
    from heartlang_jax import convert_released

    calls = []

    class _Tensor:
        def is_floating_point(self):
            return True

        def detach(self):
            return self

        def float(self):
            return self

        def numpy(self):
            return np.zeros(2, np.float32)

    def load(path, **kwargs):
        calls.append(kwargs)
        return {"model": {"module.w": _Tensor()}}

    fake = types.ModuleType("torch")
    fake.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    state = convert_released.read_pth(tmp_path / "x.pth")
    assert list(state) == ["w"]
    assert calls and calls[0].get("weights_only") is True


# --- 4. non-finite numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_p4_config_refuses_non_finite_numbers_by_field_name(value):
    from heartlang_jax import errors, stage_configs

    config = _config(6)
    config.optimizer.learning_rate = value
    with pytest.raises(errors.ConfigError, match=r"optimizer\.learning_rate: must be a finite number"):
        stage_configs.validate(config)


def test_p4_non_finite_evaluation_fails_the_run_naming_the_step(tmp_path):
    with pytest.raises(train_loop.NonFiniteError, match=r"non-finite evaluation at step 2 \(eval_loss=nan\)"):
        _run(tmp_path, 4, evaluate=lambda step: {"eval_loss": float("nan") if step == 2 else 1.0})
    assert not (tmp_path / checkpointing.CHECKPOINT_DIR / "2").exists()  # the bad step is not saved


def test_p4_an_undefined_auc_is_not_a_failure(tmp_path):
    result = _run(tmp_path, 2, evaluate=lambda step: {"eval_auc": float("nan"), "eval_loss": 1.0})
    assert result.step == 2


def test_p4_non_finite_state_is_never_saved(tmp_path, monkeypatch):
    original = vqhbr.train_step

    calls = []

    def poisoning_step(model, optimizer, batch, rng):
        metrics = original(model, optimizer, batch, rng)
        calls.append(1)
        if len(calls) == 2:  # after step 2's update: its loss and gradient norm are finite, the weights not
            model.quantizer.codebook[...] = model.quantizer.codebook[...] * np.nan
        return metrics

    monkeypatch.setattr(vqhbr, "train_step", poisoning_step)
    with pytest.raises(train_loop.NonFiniteError, match="non-finite model state at step 2"):
        _run(tmp_path, 4)
    store = checkpointing.RunCheckpoints(tmp_path, read_only=True)
    assert store.steps() == []
    store.close()


# --- 5. the workdir lock --------------------------------------------------------------------------


def test_p5_a_live_holder_is_named_and_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"in use by process {holder.pid} on host"):
            checkpointing.claim_workdir(tmp_path, _config(2), vqhbr.IDENTITY_FIELDS)
    finally:
        holder.kill()
        holder.wait()


def test_p5_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / workdir_lock.LOCK_FILE
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with caplog.at_level(logging.WARNING):
        checkpointing.claim_workdir(tmp_path, _config(2), vqhbr.IDENTITY_FIELDS)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    checkpointing.claim_workdir(tmp_path, _config(2), vqhbr.IDENTITY_FIELDS)  # the holder may claim it again
    workdir_lock.release(tmp_path)
    assert not lock.exists()


def test_p5_a_second_process_is_refused_while_the_first_runs(tmp_path):
    checkpointing.claim_workdir(tmp_path, _config(2), vqhbr.IDENTITY_FIELDS)
    code = (
        "import sys; from heartlang_jax import checkpointing, workdir_lock; "
        "from heartlang_jax.configs import vqhbr\n"
        "try:\n checkpointing.claim_workdir(sys.argv[1], vqhbr.get_config('tiny'), ('model',))\n"
        "except workdir_lock.WorkdirLockedError as e:\n print(e); sys.exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"process {os.getpid()} on host" in out.stdout
    workdir_lock.release(tmp_path)


# --- 6. a resume with changed settings ------------------------------------------------------------


def test_p6_changed_settings_are_logged_by_name_and_every_config_is_kept(tmp_path, caplog):
    first = _config(6)
    checkpointing.claim_workdir(tmp_path, first, vqhbr.IDENTITY_FIELDS)
    second = _config(6)
    second.optimizer.learning_rate = 1e-3
    second.log_every_steps = 3
    with caplog.at_level(logging.WARNING):
        checkpointing.claim_workdir(tmp_path, second, vqhbr.IDENTITY_FIELDS)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "optimizer.learning_rate" in messages and "log_every_steps" in messages
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3
    (history,) = tmp_path.glob("config-*.json")
    assert json.loads(history.read_text()) == json.loads(checkpointing.config_to_json(first))
    other = _config(6)
    other.model.encoder.num_layers = 3  # an identity field: still refused
    with pytest.raises(checkpointing.CheckpointError, match="different configuration"):
        checkpointing.claim_workdir(tmp_path, other, vqhbr.IDENTITY_FIELDS)
    workdir_lock.release(tmp_path)


# --- 7. --config with a directory that does not exist ---------------------------------------------


def test_p7_config_in_a_missing_directory_is_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "heartlang_jax.main",
            "--config=/nonexistent/vqhbr.py",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert out.returncode != 0
    assert "directory /nonexistent does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
