"""The shared training loop: exact resume, NaN stop, SIGTERM, workdir identity, partial checkpoints."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal

import jax
import numpy as np
import pytest
import synthetic
from flax import nnx

from heartlang_jax.configs import schema, typed
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import vqhbr
from heartlang_jax.training import checkpointing, optim, parallel, train_loop

SOURCE = synthetic.sentences(48, seed=0)


def _config(steps: int):
    config = vqhbr_config.get_config("tiny")
    config.num_train_steps = steps
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.dtype = "float32"
    return config


def _run(workdir, steps: int, prepare_batch=None, total_steps: int = 6, train_step=vqhbr.train_step):
    """Trains a tiny VQ-HBR for `steps` (of a `total_steps` schedule, so the lr is the same)."""
    config = schema.validate(_config(steps))
    model = vqhbr.build_model(config)
    tx = optim.make_optimizer(config.optimizer, num_train_steps=total_steps, warmup_steps=1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    result = train_loop.run(
        stage="vqhbr",
        config=config,
        workdir=str(workdir),
        model=model,
        optimizer=optimizer,
        train_step=train_step,
        train_data=input_pipeline.train_dataset(SOURCE, global_batch=8, seed=0),
        mesh=parallel.make_mesh(),
        schedule=train_loop.Schedule.from_config(config, len(SOURCE), 8),
        prepare_batch=prepare_batch,
    )
    return model, result


def _state(model):
    def host(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(host, nnx.to_pure_dict(nnx.state(model)))


def _assert_trees_close(a, b, tol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=tol, rtol=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, result = _run(tmp_path_factory.mktemp("full"), 6)
    assert result.step == 6
    return _state(model)


def test_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    _run(tmp_path, 3)  # saves at steps 2 and 3 (end)
    model, result = _run(tmp_path, 6)
    assert result.step == 6
    _assert_trees_close(_state(model), uninterrupted)


def test_nonfinite_loss_stops_at_its_step_and_keeps_good_checkpoints(tmp_path):
    def poison(batch):
        poison.calls += 1
        if poison.calls == 3:  # the 3rd step's batch
            batch["words"] = batch["words"] * np.nan
        return batch

    poison.calls = 0
    with pytest.raises(train_loop.NonFiniteError, match="step 3"):
        _run(tmp_path, 6, prepare_batch=poison)
    store = checkpointing.RunCheckpoints(tmp_path)
    assert store.steps() == [2]
    model = vqhbr.build_model(schema.validate(_config(6)))
    store.restore(2, model, None)
    store.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_sigterm_saves_then_resumes_identically(tmp_path, uninterrupted):
    # Sent from the 3rd step itself: batches are prepared ahead of the step in another thread.
    def preempt(*args):
        preempt.calls += 1
        if preempt.calls == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return vqhbr.train_step(*args)

    preempt.calls = 0
    with pytest.raises(train_loop.Preempted) as info:
        _run(tmp_path, 6, train_step=preempt)
    assert info.value.step == 3
    assert checkpointing.RunCheckpoints(tmp_path).steps()[-1] == 3
    model, _ = _run(tmp_path, 6)
    _assert_trees_close(_state(model), uninterrupted)


def test_workdir_of_another_config_is_refused(tmp_path):
    config = _config(6)
    checkpointing.claim_workdir(tmp_path, typed.as_dict(schema.validate(config)), vqhbr.IDENTITY_FIELDS)
    other = _config(6)
    other.model.encoder.num_layers = 3
    with pytest.raises(checkpointing.CheckpointError, match="model.*different configuration|different configuration"):
        checkpointing.claim_workdir(tmp_path, typed.as_dict(schema.validate(other)), vqhbr.IDENTITY_FIELDS)
    checkpointing.claim_workdir(
        tmp_path, typed.as_dict(schema.validate(config)), vqhbr.IDENTITY_FIELDS
    )  # the same config resumes


def test_partial_and_unreadable_checkpoints_are_never_loaded(tmp_path):
    _run(tmp_path, 4)  # steps 2 and 4
    directory = pathlib.Path(tmp_path) / checkpointing.CHECKPOINT_DIR
    # What a kill during a save leaves behind: a temporary directory that is never listed.
    shutil.copytree(directory / "4", directory / "6.orbax-checkpoint-tmp-123")
    # And a finalized step whose files were lost: restore falls back to the previous one.
    shutil.rmtree(directory / "4" / "model")
    store = checkpointing.RunCheckpoints(tmp_path)
    model = vqhbr.build_model(schema.validate(_config(6)))
    step, _, meta = store.restore_latest(model, None)
    store.close()
    assert step == 2 and meta["step"] == 2


def test_train_step_compiles_once(caplog):
    config = _config(5)
    model = vqhbr.build_model(schema.validate(config))
    tx = optim.make_optimizer(config.optimizer, num_train_steps=5, warmup_steps=1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    mesh = parallel.make_mesh()
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    it = iter(input_pipeline.train_dataset(SOURCE, global_batch=8, seed=0).to_iter_dataset())
    with jax.log_compiles(), caplog.at_level("WARNING"):
        for step in range(5):
            vqhbr.train_step(model, optimizer, parallel.shard_batch(next(it), mesh), jax.random.key(step))
    compiles = [r for r in caplog.records if "Compiling" in r.getMessage() and "train_step" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]
