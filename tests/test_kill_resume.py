"""A real pre-training process, killed mid-run, resumed by rerunning the same command.

SIGKILL gives the process no chance to save: the rerun must resume from the last complete
checkpoint (passing over any half-written one) and still end with the parameters of a run that was
never interrupted. SIGTERM is a preemption notice: the process saves, says so and exits 0. A
workdir of another model size is refused. Fine-tuning (each sweep cell) is checked in process.
The loop-level versions of these (VQ-HBR's step), partial checkpoints and the NaN stop are in
test_train_loop.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
import synthetic
from flax import nnx

from heartlang_jax.configs import finetune as finetune_config
from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import finetune, pretrain
from heartlang_jax.training import checkpointing, train_loop

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 16  # checkpoints every 2 steps: the kill lands with several saves still to come
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def launch(tmp_path_factory, tiny_vqhbr_workdir, bundled_tfds_dir):
    """Starts the pre-training command on a workdir (the session's dataset and tokenizer), output
    appended to a log file. The runs share a persistent compilation cache: the first compiles, the
    others load the same executables (so the same numbers) at half the cost."""
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }

    def start(workdir: pathlib.Path, log: pathlib.Path, *overrides: str) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "heartlang_jax.main",
            "--config=configs/pretrain_base.py:tiny",
            f"--workdir={workdir}",
            f"--config.num_train_steps={NUM_STEPS}",
            "--config.checkpoint_every_steps=2",
            "--config.log_every_steps=2",
            "--config.batch_size=8",
            f"--config.vqhbr_workdir={tiny_vqhbr_workdir}",
            f"--config.data.tfds_dir={bundled_tfds_dir}",
            *overrides,
        ]  # fmt: skip
        with open(log, "ab") as f:  # a file, not a pipe: a full pipe would block the child
            return subprocess.Popen(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)

    return start


def _run_to_end(launch, workdir: pathlib.Path, log: pathlib.Path) -> str:
    rc = launch(workdir, log).wait(timeout=TIMEOUT_S)
    text = log.read_text()
    assert rc == 0, f"run failed with exit code {rc}:\n{text[-3000:]}"
    return text


def _steps(workdir: pathlib.Path) -> list[int]:
    """Finalized checkpoints; Orbax writes to `<step>.orbax-checkpoint-tmp-*` and renames when done."""
    return sorted(int(p.name) for p in (workdir / checkpointing.CHECKPOINT_DIR).glob("*") if p.name.isdigit())


def _wait_for_checkpoint(process: subprocess.Popen, workdir: pathlib.Path, log: pathlib.Path, after: int = 0) -> None:
    """Returns once a checkpoint past step `after` is finalized (the run is then mid-way)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if _steps(workdir) and _steps(workdir)[-1] > after:
            return
        if process.poll() is not None:
            ended = f"run ended (exit code {process.returncode}) before a checkpoint past step {after}"
            pytest.fail(f"{ended}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no checkpoint past step {after} within the time limit")


def _run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run recorded in its workdir."""
    return ml_collections.ConfigDict(json.loads((workdir / checkpointing.CONFIG_FILE).read_text()))


def _final_params(workdir: pathlib.Path, vqhbr_workdir: pathlib.Path) -> tuple[int, dict]:
    """The newest checkpoint's parameters, restored into a model rebuilt from the run's config."""
    config = _run_config(workdir)
    vocab_size = _run_config(vqhbr_workdir).model.num_codes
    model = pretrain.build_model(schema.validate(config), vocab_size)
    store = checkpointing.RunCheckpoints(workdir, read_only=True)
    step = store.steps()[-1]
    store.restore(step, model, None)
    store.close()
    return step, jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _assert_params_close(actual: dict, expected: dict) -> None:
    flat_actual = jax.tree_util.tree_leaves_with_path(actual)
    flat_expected = jax.tree_util.tree_leaves_with_path(expected)
    assert [path for path, _ in flat_actual] == [path for path, _ in flat_expected]
    for (path, a), (_, b) in zip(flat_actual, flat_expected):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, launch, tiny_vqhbr_workdir):
    base = tmp_path_factory.mktemp("uninterrupted")
    workdir = base / "run"
    _run_to_end(launch, workdir, base / "log.txt")
    step, params = _final_params(workdir, tiny_vqhbr_workdir)
    assert step == NUM_STEPS
    return workdir, params


def test_sigterm_then_sigkill_then_rerun_ends_like_an_uninterrupted_run(
    tmp_path, launch, uninterrupted, tiny_vqhbr_workdir
):
    """Both interruptions in one chain of runs, each resumed by rerunning the same command."""
    workdir, log = tmp_path / "run", tmp_path / "log.txt"
    process = launch(workdir, log)
    _wait_for_checkpoint(process, workdir, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]
    match = re.search(r"preempted: checkpoint saved at step (\d+)", log.read_text())
    assert match, log.read_text()[-3000:]
    saved_at = int(match.group(1))
    assert saved_at < NUM_STEPS and _steps(workdir)[-1] == saved_at

    process = launch(workdir, log)
    _wait_for_checkpoint(process, workdir, log, after=saved_at)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    assert re.search(rf"resumed from the checkpoint at step {saved_at}\b", log.read_text())
    killed_at = _steps(workdir)[-1]
    assert saved_at < killed_at < NUM_STEPS, "the run finished before the kill; the test did not interrupt it"

    text = _run_to_end(launch, workdir, log)
    assert re.search(rf"resumed from the checkpoint at step {killed_at}\b", text)
    step, params = _final_params(workdir, tiny_vqhbr_workdir)
    assert step == NUM_STEPS
    _assert_params_close(params, uninterrupted[1])


def test_workdir_of_another_model_size_is_refused(tmp_path, launch, uninterrupted):
    """Refused with a message naming the difference, before the checkpoints are touched."""
    workdir, log = tmp_path / "run", tmp_path / "log.txt"
    shutil.copytree(uninterrupted[0], workdir)
    before = {p.relative_to(workdir): p.stat().st_mtime_ns for p in workdir.rglob("*")}
    rc = launch(workdir, log, "--config.model.encoder.num_layers=3").wait(timeout=TIMEOUT_S)
    assert rc == 2, log.read_text()[-3000:]
    assert re.search(r"CheckpointError: .* holds a run with a different configuration \(model\b", log.read_text())
    assert "Traceback" not in log.read_text()
    assert {p.relative_to(workdir): p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_finetuning_preempted_then_rerun_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    """Fine-tuning (and so each sweep cell) at unit level, in process: SIGTERM while the 3rd batch
    is read, then the same call again. Parameters and the best-epoch record (kept in `meta`) must
    match a run that was never interrupted."""
    sources = {split: synthetic.sentences(24, seed) for seed, split in enumerate(("train", "validation", "test"))}
    config = finetune_config.get_config("tiny")
    config.encoder.update(num_layers=2, hidden_dim=16, mlp_dim=32, num_heads=2, head_dim=8)
    config.update(
        task="superdiagnostic", mode="linear", batch_size=4, num_train_steps=6, eval_every_steps=2, dtype="float32"
    )
    names = [f"c{i}" for i in range(synthetic.TASK_DIMS[config.task])]

    def trained_params(workdir):
        model = finetune.build_model(schema.validate(config), len(names))
        store = checkpointing.RunCheckpoints(workdir, read_only=True)
        store.restore(store.steps()[-1], model, None)
        store.close()
        return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    expected = finetune.finetune(schema.validate(config), tmp_path / "uninterrupted", sources, names, synthetic.DATASET)

    def preempting_dataset(*args, **kwargs):
        def signal_at_third_batch(index, batch):
            if index == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return batch

        return train_dataset(*args, **kwargs).map_with_index(signal_at_third_batch)

    train_dataset = input_pipeline.train_dataset
    monkeypatch.setattr(input_pipeline, "train_dataset", preempting_dataset)
    with pytest.raises(train_loop.Preempted) as info:
        finetune.finetune(schema.validate(config), tmp_path / "run", sources, names, synthetic.DATASET)
    monkeypatch.undo()
    assert 0 < info.value.step < config.num_train_steps
    store = checkpointing.RunCheckpoints(tmp_path / "run", read_only=True)
    # The preemption step is the newest; the best evaluation so far is kept beside it (best-N).
    assert store.steps()[-1] == info.value.step
    store.close()

    assert finetune.finetune(schema.validate(config), tmp_path / "run", sources, names, synthetic.DATASET) == expected
    _assert_params_close(trained_params(tmp_path / "run"), trained_params(tmp_path / "uninterrupted"))
