"""Data parallelism with jit and shardings: one mesh, replicated parameters, a sharded batch.

pmap has been in maintenance mode since JAX 0.8; with a global mesh, cross-device sums (the
codebook's cluster counts, the loss mean) come out right by construction.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every host, named `data`.

    Auto axes: the compiler propagates "params replicated, batch split" through the model, so
    model code carries no sharding annotations.
    """
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def replicate_module(module: nnx.Module, mesh: jax.sharding.Mesh) -> None:
    """Places every variable of `module` (parameters and non-trained state) on all devices."""
    nnx.update(module, replicate(nnx.state(module), mesh))


def global_batch_size(per_device_batch_size: int) -> int:
    return per_device_batch_size * jax.device_count()


def host_batch_size(per_device_batch_size: int) -> int:
    return per_device_batch_size * jax.local_device_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This host's rows become its slice of one global array, split along `data`."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in batch.items()}
