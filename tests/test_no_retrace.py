"""The jitted training steps compile once: later steps (new data, new RNG, codebook initialized)
reuse the executable. A retrace per step would dominate a real run's time."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import synthetic
from flax import nnx

from heartlang_jax.configs import pretrain_base, schema
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import pretrain, vqhbr
from heartlang_jax.training import optim, parallel


@pytest.fixture
def compile_counter():
    """Counts XLA backend compilations while the test runs."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


def _batches(n: int, mesh):
    source = synthetic.sentences(8 * n, seed=4)
    return [parallel.shard_batch(b, mesh) for b in input_pipeline.eval_batches(source, global_batch=8)]


def _optimizer(model, config, mesh):
    """The optimizer, with model and optimizer replicated over the mesh as `train_loop.run` does."""
    optimizer = nnx.Optimizer(
        model, optim.make_optimizer(config.optimizer, num_train_steps=10, warmup_steps=1), wrt=nnx.Param
    )
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    return optimizer


def test_vqhbr_step_compiles_once(compile_counter):
    mesh = parallel.make_mesh()
    config = vqhbr_config.get_config("tiny")
    config.dtype = "float32"
    model = vqhbr.build_model(schema.validate(config))
    optimizer = _optimizer(model, config, mesh)
    batches = _batches(4, mesh)
    vqhbr.train_step(model, optimizer, batches[0], jax.random.key(0))  # k-means init happens here
    compiled_first = len(compile_counter)
    assert compiled_first >= 1
    for i, batch in enumerate(batches[1:]):
        metrics = vqhbr.train_step(model, optimizer, batch, jax.random.key(i + 1))
    assert np.isfinite(float(metrics["loss"]))
    assert len(compile_counter) == compiled_first


def test_pretrain_step_compiles_once(compile_counter):
    mesh = parallel.make_mesh()
    config = pretrain_base.get_config("tiny")
    config.dtype = "float32"
    model = pretrain.build_model(schema.validate(config), vocab_size=32)
    optimizer = _optimizer(model, config, mesh)
    step = pretrain.make_train_step(config.model.mask_ratio)
    rng = np.random.default_rng(0)
    batches = _batches(4, mesh)
    for i, batch in enumerate(batches):
        batch["targets"] = parallel.shard_batch(
            {"t": rng.integers(0, 32, batch["lead_ids"].shape).astype(np.int32)}, mesh
        )["t"]
        step(model, optimizer, batch, jax.random.key(i))
        if i == 0:
            compiled_first = len(compile_counter)
    assert compiled_first >= 1
    assert len(compile_counter) == compiled_first
