"""Orbax checkpoints: resuming a stage in its own workdir, and handing a model to the next stage.

A stage's workdir holds `config.json` (the full config that made it) and `checkpoints/<step>/`
with four items: `model` and `optimizer` (NNX state), `data` (the grain iterator state) and
`meta` (step and anything else small). Orbax writes each step to a temporary directory and
renames it when complete, so a killed save is never listed; restore still falls back past a step
that cannot be read. Saves are asynchronous (Orbax's `enable_async_checkpointing`): the arrays
are copied off the devices, then written in the background while training goes on; `wait()`,
`close()` and every restore wait for a save in flight first. Saves are collective: every host calls `save` at the same step, and Orbax
writes each host's shards. Paths go through `etils.epath`, so a workdir may be `gs://...`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from heartlang_jax import atomic_file
from heartlang_jax.errors import CheckpointError
from heartlang_jax.training import parallel, workdir_lock

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_INFO_NAME = "model.json"  # model_info.MODEL_INFO_FILE, named in errors
UNREADABLE_DIR = "checkpoints_unreadable"  # where a resume moves steps it cannot read
_ITEMS = ("model", "optimizer", "data", "meta")
_STEP_METRIC = "step"  # saved beside a step's metrics, to break ties between equal best values


def _saveable(state: nnx.State) -> dict:
    """A pure dict of arrays; typed PRNG keys become their raw uint32 data."""

    def leaf(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(leaf, nnx.to_pure_dict(state))


def _restore_into(state: nnx.State, restored: Mapping) -> None:
    """Writes `restored` (from `_saveable`) back into the live `state`, re-wrapping PRNG keys."""
    template = nnx.to_pure_dict(state)

    def leaf(t, r):
        if isinstance(t, jax.Array) and jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return r

    nnx.replace_by_pure_dict(state, jax.tree.map(leaf, template, dict(restored)))


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# Checkpoints written before attention fused its projections hold `attn.{query,key,value}`
# ([..., D, inner] kernels, [..., inner] biases) where the model now has one `attn.qkv`
# ([..., D, 3 * inner], columns Q then K then V); such a step is read in its own layout and fused.
_UNFUSED = ("query", "key", "value")


def _stored_unfused(item_dir: epath.Path) -> bool:
    """Whether the stored item holds the unfused attention projections (Orbax metadata only)."""
    try:
        stored = ocp.StandardCheckpointHandler().metadata(item_dir)
    except Exception:  # unreadable metadata: the restore itself reports it
        return False
    return any(".attn.query." in f".{path}." for path in _shapes(stored))


def _split_qkv(tree):
    """An (abstract) tree in the fused layout -> the same in the unfused one."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: _split_qkv(v) for k, v in tree.items()}
    if "qkv" in out and isinstance(out["qkv"], Mapping) and not any(k in out for k in _UNFUSED):
        fused = out.pop("qkv")
        for name in _UNFUSED:
            out[name] = {
                param: jax.ShapeDtypeStruct((*leaf.shape[:-1], leaf.shape[-1] // 3), leaf.dtype, sharding=leaf.sharding)
                for param, leaf in fused.items()
            }
    return out


def _fuse_qkv(tree):
    """A restored tree in the unfused layout -> the fused one (Q, K, V concatenated, last axis)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: _fuse_qkv(v) for k, v in tree.items()}
    if all(k in out and isinstance(out[k], Mapping) for k in _UNFUSED):
        parts = [out.pop(name) for name in _UNFUSED]
        out["qkv"] = {param: jnp.concatenate([p[param] for p in parts], axis=-1) for param in parts[0]}
    return out


def config_to_json(config: Mapping) -> str:
    """A run's config (`configs.typed.as_dict` of its typed config) as `config.json` holds it."""
    return json.dumps(config, indent=2, sort_keys=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Process 0 writes `text` to a temporary name beside `path`, then renames it: never half-written."""
    if jax.process_index() == 0:
        atomic_file.atomic_write(path, text)


def claim_workdir(workdir: str | os.PathLike, config: Mapping, identity_fields) -> None:
    """Records the run's config; refuses a workdir whose earlier run differs in `identity_fields`.

    `identity_fields` are dotted paths (e.g. "model", "stage") that must match for a resume to
    make sense: a Base run must not resume from a Small run's checkpoints.
    """
    workdir = epath.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the workdir {workdir}: {e.strerror or e}") from e
    workdir_lock.acquire(workdir)  # also the first write: a read-only workdir fails here, in one line
    path = workdir / CONFIG_FILE
    text = config_to_json(config)
    if path.is_file():
        previous_text = path.read_text()
        previous = json.loads(previous_text)
        current = json.loads(text)
        differing = [d for f in identity_fields for d in _differences(_get(previous, f), _get(current, f), f)]
        if differing:
            details = "; ".join(f"{path}: {there!r} there, {now!r} now" for path, there, now in differing)
            raise CheckpointError(
                f"{workdir} holds a run with a different configuration ({details}). "
                "Use a new --workdir, or rerun with the original config to resume it."
            )
        changed = _differences(previous, current, "config")
        if changed:
            # The earlier run's settings stay beside the new ones: config.json is always the latest.
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            kept = workdir / f"config-{stamp}.json"
            for field, there, now in changed:
                logging.warning(
                    "Resuming %s with a changed setting: %s: %r before, %r now", workdir, field[7:], there, now
                )
            logging.warning("The earlier config of %s is kept as %s", workdir, kept.name)
            atomic_write_text(kept, previous_text)
    atomic_write_text(path, text)


def _differences(there, now, path: str) -> list[tuple[str, object, object]]:
    """(dotted path, there, now) of each field that differs, so the message names the field."""
    if isinstance(there, Mapping) and isinstance(now, Mapping):
        return [d for k in sorted(set(there) | set(now)) for d in _differences(there.get(k), now.get(k), f"{path}.{k}")]
    return [] if there == now else [(path, there, now)]


def _get(tree: Mapping, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute; a URL-style path (`gs://...`) as it is."""
    path = epath.Path(path)
    return path if "://" in os.fspath(path) else epath.Path(os.path.abspath(path))


class RunCheckpoints:
    """The checkpoints of one stage in one workdir.

    `best_metric` keeps, besides the newest `max_to_keep` steps (for resuming), the step whose
    saved metrics have the highest value of that name (Orbax's best-N preservation); of equal
    values the earliest step wins, as a "new best only if strictly better" rule records it.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        max_to_keep: int = 2,
        read_only: bool = False,
        best_metric: str | None = None,
    ):
        self.directory = absolute(workdir) / CHECKPOINT_DIR
        if read_only:
            if not self.directory.is_dir():
                raise CheckpointError(f"no checkpoints in {self.directory}")
            options = ocp.CheckpointManagerOptions(create=False, read_only=True, cleanup_tmp_directories=False)
        elif best_metric is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True
            )
        else:
            policies = ocp.checkpoint_managers
            keep = policies.AnyPreservationPolicy(
                [
                    policies.LatestN(n=max_to_keep),
                    # BestN keeps the last of equal keys; -step makes that the earliest step.
                    policies.BestN(
                        get_metric_fn=lambda m: (m[best_metric], -m[_STEP_METRIC]),
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            )
            options = ocp.CheckpointManagerOptions(
                create=True, cleanup_tmp_directories=True, preservation_policy=keep, enable_async_checkpointing=True
            )
        self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None, data_state, meta, metrics=None
    ) -> None:
        args = {
            "model": ocp.args.StandardSave(_saveable(nnx.state(model))),
            "data": ocp.args.JsonSave(data_state or {}),
            "meta": ocp.args.JsonSave({"step": int(step), **(meta or {})}),
        }
        if optimizer is not None:  # a model-only checkpoint (e.g. a carried vocabulary) has none
            args["optimizer"] = ocp.args.StandardSave(_saveable(nnx.state(optimizer)))
        if metrics is not None:  # a NaN score (e.g. AUC without positives) ranks last
            metrics = {k: float(v) if math.isfinite(float(v)) else -math.inf for k, v in metrics.items()}
            metrics[_STEP_METRIC] = int(step)
        with self._saving(f"step {step}"):
            self._manager.save(step, args=ocp.args.Composite(**args), force=True, metrics=metrics)

    @contextlib.contextmanager
    def _saving(self, what: str):
        """A save that fails for the file system (disk full, read-only) is one line. Orbax writes a
        step to a temporary folder and renames it when complete, so the failed step is never listed
        and the next run removes its temporary folder."""
        try:
            yield
        except Exception as e:
            cause = _os_error(e)
            if cause is None:
                raise
            raise CheckpointError(
                f"saving the checkpoint ({what}) to {self.directory} failed: {cause.strerror or cause}; "
                "the steps saved before it are intact"
            ) from e

    def restore(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None) -> tuple[dict, dict]:
        """Restores in place into `model`/`optimizer`; returns (data_state, meta).

        A step saved before attention fused its Q, K and V projections (`attn.query/key/value`)
        is read in that layout and fused on the way in (`_split_qkv` / `_fuse_qkv`)."""
        self._manager.wait_until_finished()  # never read a step still being written
        unfused = _stored_unfused(self.directory / str(step) / "model")
        layout = _split_qkv if unfused else (lambda tree: tree)
        back = _fuse_qkv if unfused else (lambda tree: tree)
        model_state = nnx.state(model)
        args = {
            "model": ocp.args.StandardRestore(layout(_abstract(_saveable(model_state)))),
            "data": ocp.args.JsonRestore(),
            "meta": ocp.args.JsonRestore(),
        }
        if optimizer is not None:
            args["optimizer"] = ocp.args.StandardRestore(layout(_abstract(_saveable(nnx.state(optimizer)))))
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        _restore_into(model_state, back(restored["model"]))
        nnx.update(model, model_state)
        if optimizer is not None:
            opt_state = nnx.state(optimizer)
            _restore_into(opt_state, back(restored["optimizer"]))
            nnx.update(optimizer, opt_state)
        return dict(restored["data"] or {}), dict(restored["meta"])

    def restore_latest(self, model: nnx.Module, optimizer: nnx.Optimizer | None) -> tuple[int, dict, dict] | None:
        """Newest readable step, or None for a fresh run.

        An unreadable step is moved aside to `<workdir>/checkpoints_unreadable/` (named in the
        log) and passed over: left in place, the resumed run would reach that step again and Orbax
        would refuse to save over it (StepAlreadyExistsError).
        """
        moved = False
        found = None
        for step in reversed(self.steps()):
            try:
                data_state, meta = self.restore(step, model, optimizer)
            except Exception as e:  # any failure to read means "not a usable checkpoint"
                target = self._move_aside(step)
                logging.warning(
                    "Checkpoint step %d in %s is unreadable (%s); moved it to %s, trying an older one",
                    step,
                    self.directory,
                    _one_line(e),
                    target,
                )
                moved = True
                continue
            found = step, data_state, meta
            break
        if moved:
            parallel.barrier("heartlang_jax.training.checkpointing.moved_aside")
            self._manager.reload()
        return found

    def _move_aside(self, step: int) -> epath.Path:
        """Moves step `step`'s folder to `checkpoints_unreadable/<step>[-n]` (process 0 renames)."""
        aside = self.directory.parent / UNREADABLE_DIR
        target = aside / str(step)
        n = 1
        while target.exists():
            target, n = aside / f"{step}-{n}", n + 1
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        return target

    def wait(self) -> None:
        with self._saving("in the background"):
            self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            with self._saving("in the background"):
                self._manager.wait_until_finished()
        finally:
            self._manager.close()


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError (with an errno) behind `error`, following the chain Orbax wraps it in."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{path: (shape, dtype)} of every array of `tree` (real, abstract or Orbax metadata); PRNG keys,
    stored as their raw data, are left out."""
    out = {}
    for path, leaf in jax.tree.leaves_with_path(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue
        out[jax.tree_util.keystr(path, simple=True, separator=".")] = (tuple(leaf.shape), str(dtype))
    return out


def _fused_shapes(stored: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """`_shapes` of a stored item as `restore` fuses it (`attn.query/key/value` -> `attn.qkv`)."""
    out = {}
    for path, (shape, dtype) in stored.items():
        head, sep, tail = path.partition(".attn.query.")
        if sep:
            out[f"{head}.attn.qkv.{tail}"] = ((*shape[:-1], 3 * shape[-1]), dtype)
        elif ".attn.key." not in path and ".attn.value." not in path:
            out[path] = (shape, dtype)
    return out


def check_fits(workdir: str | os.PathLike, step: int, model: nnx.Module, what: str) -> None:
    """Compares the model's array shapes (`model` may be abstract, from `nnx.eval_shape`) with those
    stored in checkpoint `step` (Orbax metadata, no array read): nothing is allocated for a model
    that cannot be restored. CheckpointError naming the fields that differ, or an unreadable step."""
    step_dir = absolute(workdir) / CHECKPOINT_DIR / str(step)
    try:
        stored = _shapes(ocp.StandardCheckpointHandler().metadata(step_dir / "model"))
    except Exception as e:  # a missing or corrupt metadata file, whatever Orbax raises for it
        raise CheckpointError(
            f"{what}: checkpoint step {step} in {step_dir.parent} is unreadable ({_one_line(e)})"
        ) from e
    stored = _fused_shapes(stored)
    wanted = {k: v[0] for k, v in _shapes(nnx.to_pure_dict(nnx.state(model))).items()}
    # PRNG keys are stored as their raw uint32 data and left out of `wanted`: drop them here too
    have = {k: v[0] for k, v in stored.items() if k in wanted or not k.endswith(".key")}
    differ = [
        f"{k}: {have.get(k, 'absent')} stored, {wanted.get(k, 'absent')} in the model"
        for k in sorted(set(have) | set(wanted))
        if have.get(k) != wanted.get(k)
    ]
    if differ:
        shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise CheckpointError(
            f"{what} at {step_dir} does not fit the model its {MODEL_INFO_NAME} describes ({len(differ)} arrays differ: {shown})"
        )


def load_model_from_run(workdir: str | os.PathLike, model: nnx.Module, what: str) -> int:
    """Initializes `model` from the newest checkpoint of an earlier stage's workdir; returns its step.

    `what` names the checkpoint in errors ("tokenizer checkpoint", "pre-training checkpoint").
    Shapes are checked against the stored ones first; a step whose files cannot be read is
    "checkpoint step N is unreadable".
    """
    directory = absolute(workdir) / CHECKPOINT_DIR
    try:
        checkpoints = RunCheckpoints(workdir, read_only=True)
        steps = checkpoints.steps()
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{what} not found: {directory} has no checkpoints ({e})") from e
    try:
        if not steps:
            raise CheckpointError(f"{what} not found: {directory} has no complete checkpoint")
        check_fits(workdir, steps[-1], model, what)
        try:
            checkpoints.restore(steps[-1], model, optimizer=None)
        except Exception as e:
            raise CheckpointError(
                f"{what}: checkpoint step {steps[-1]} in {directory} is unreadable ({_one_line(e)})"
            ) from e
    finally:
        checkpoints.close()
    return steps[-1]
