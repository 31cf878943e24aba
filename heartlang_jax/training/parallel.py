"""Many devices and many hosts with jit and shardings: one mesh, replicated parameters, a sharded batch.

Every line here runs on every host (TPU VM pod workers, multi-node GPU processes). Each host
builds the same mesh and feeds only its own rows; a host never `device_put`s to devices it does
not own, and never `device_get`s an array it cannot address. pmap has been in maintenance mode
since JAX 0.8; with a global mesh, cross-device sums (the codebook's cluster counts, the loss
mean) come out right by construction.

The batch size in configs is global (the paper's 256), so a run on 1, 4 or 8 devices follows
the same schedule. Global batches are drawn from one permutation that every host computes alike;
host h takes rows [h * G/P, (h+1) * G/P) of each, which are exactly the rows its devices hold in
the mesh, so the model sees the same batches whatever the number of hosts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from heartlang_jax import errors

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every host, named `data`, devices grouped by host.

    Auto axes: the compiler propagates "params replicated, batch split" through the model, so
    model code carries no sharding annotations.
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def check_global_batch(batch_size: int, field: str = "batch_size") -> int:
    """The global batch, checked to split evenly over the devices; returns this host's rows."""
    devices = jax.device_count()
    if batch_size < devices or batch_size % devices:
        raise errors.ConfigError(
            f"config.{field}={batch_size} is the global batch and must be a positive multiple of the "
            f"{devices} devices ({jax.process_count()} process(es) x {jax.local_device_count()})"
        )
    return host_rows(batch_size)


def host_rows(global_batch: int) -> int:
    """Rows of a global batch that this host feeds (its devices' share)."""
    return global_batch * jax.local_device_count() // jax.device_count()


def host_slice(global_batch: int) -> slice:
    """This host's rows of a global batch: process order matches the mesh's device order."""
    rows = host_rows(global_batch)
    start = sum(1 for d in jax.devices() if d.process_index < jax.process_index()) * global_batch // jax.device_count()
    return slice(start, start + rows)


def _replicate_leaf(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_replicate_leaf(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    value = np.asarray(x)  # the same on every host: created from the same seed, or restored
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree, mesh: jax.sharding.Mesh):
    """Places host values on every device of the mesh, each host writing only its own devices."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


def replicate_module(module: nnx.Module | nnx.Optimizer, mesh: jax.sharding.Mesh) -> None:
    """Places every variable of `module` (parameters and non-trained state) on all devices."""
    nnx.update(module, replicate(nnx.state(module), mesh))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This host's rows become its slice of one global array, split along `data`.

    Fields keep their dtypes: the input pipeline sends words as stored, float16, and ids as
    uint8 (half and a quarter of the bytes), and the models cast them on the devices (the token
    embedding casts words to the compute dtype; embedding lookups take any integer ids)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in batch.items()}


def to_host(tree):
    """Device results as NumPy on every host.

    Replicated arrays (sums and means reduced inside jit) are read from a local copy;
    batch-sharded ones (per-example outputs) are gathered from all hosts, in global row order.
    """

    def leaf(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)


def gather_host_rows(tree):
    """Host-local NumPy rows (e.g. a batch's `index` and `mask`) of every host, in global row order."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True)), tree)


def barrier(name: str, timeout_s: int = 24 * 3600) -> None:
    """All hosts wait here (a no-op with one process).

    A coordination-service barrier, not a device collective: a collective's transport gives up
    after seconds, while process 0 may spend hours building a dataset before it arrives.
    `name` must be unique per call.
    """
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, timeout=timeout_s)


def distributed_settings(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict:
    """The `jax.distributed.initialize` arguments from flags, else the JAX_* environment variables."""
    env = os.environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    return {k: v for k, v in given.items() if v is not None}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.ConfigError(f"environment variable {name}={value!r} must be an integer") from None


# Launchers that set these start every rank of an MPI job (MPICH/Intel MPI hydra, PMIx); JAX's
# mpi4py detection is opt-in, so it is asked for when mpi4py is installed and one of them is set.
# (Open MPI's own variables are detected by JAX without mpi4py.)
_MPI_LAUNCH_VARIABLES = ("PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def _mpi4py_launch() -> bool:
    import importlib.util

    return any(v in os.environ for v in _MPI_LAUNCH_VARIABLES) and importlib.util.find_spec("mpi4py") is not None


def initialize_distributed(**flags) -> bool:
    """Starts multi-process JAX unless this is plainly one process; True if it did.

    JAX's own `jax.distributed.initialize()` detects the cluster (Cloud TPU VM pods and GKE TPU,
    Kubernetes Jobs/JobSets with the `kubernetes` package, SLURM, Open MPI, and mpi4py under an
    MPI launcher) and fills in whatever the flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID leave unset. Where it finds no cluster and nothing is set, it stops before
    any network call and the run is one process, so a laptop never waits on a coordinator;
    `JAX_NUM_PROCESSES=1` (or `--num_processes=1`) forces one process anywhere.
    """
    settings = distributed_settings(**flags)
    if settings.get("num_processes") == 1 and not settings.get("coordinator_address"):
        return False
    method = "mpi4py" if _mpi4py_launch() else None
    try:
        jax.distributed.initialize(**settings, cluster_detection_method=method)
    except ValueError as e:  # JAX detected no cluster, and the settings do not name one
        missing = [k for k in ("coordinator_address", "num_processes", "process_id") if k not in settings]
        if not settings:
            logging.info("no cluster detected (%s); running as one process", e)
            return False
        if not missing:
            raise errors.ConfigError(f"multi-process settings {settings}: {e}") from None
        raise errors.ConfigError(
            f"multi-process launch needs {', '.join('--' + m for m in missing)} (or "
            f"{', '.join('JAX_' + m.upper() for m in missing)}) where JAX detects no cluster: {e}"
        ) from None
    return True
