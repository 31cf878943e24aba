"""Runs two VQ-HBR and two pre-training steps on however many devices XLA_FLAGS gives, saves the results.

Used by test_data_parallel.py in subprocesses with 8 simulated CPU devices and with 1.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import synthetic
from flax import nnx

from heartlang_jax.configs import pretrain_base, schema
from heartlang_jax.configs import vqhbr as vqhbr_config
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import pretrain, vqhbr
from heartlang_jax.training import optim, parallel


def _flat(tree) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree)):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


def main(out_path: str) -> None:
    mesh = parallel.make_mesh()
    source = synthetic.sentences(32, seed=1)
    batches = list(input_pipeline.eval_batches(source, global_batch=16))  # fixed order, 16 rows each
    results = {}

    config = vqhbr_config.get_config("tiny")
    config.dtype = "float32"
    model = vqhbr.build_model(schema.validate(config))
    optimizer = nnx.Optimizer(
        model, optim.make_optimizer(config.optimizer, num_train_steps=10, warmup_steps=1), wrt=nnx.Param
    )
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    for i, batch in enumerate(batches):
        vqhbr.train_step(model, optimizer, parallel.shard_batch(batch, mesh), jax.random.key(i))
    results.update({f"vqhbr{k}": v for k, v in _flat(nnx.state(model)).items()})

    config = pretrain_base.get_config("tiny")
    config.dtype = "float32"
    model = pretrain.build_model(schema.validate(config), vocab_size=64)
    optimizer = nnx.Optimizer(
        model, optim.make_optimizer(config.optimizer, num_train_steps=10, warmup_steps=1), wrt=nnx.Param
    )
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    step = pretrain.make_train_step(config.model.mask_ratio)
    rng = np.random.default_rng(0)
    for i, batch in enumerate(batches):
        batch["targets"] = rng.integers(0, 64, batch["lead_ids"].shape).astype(np.int32)
        step(model, optimizer, parallel.shard_batch(batch, mesh), jax.random.key(i))
    results.update({f"pretrain{k}": v for k, v in _flat(nnx.state(model, nnx.Param)).items()})
    results["device_count"] = np.asarray(jax.device_count())
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
