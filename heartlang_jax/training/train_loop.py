"""The training loop every stage shares: resume, log, evaluate, checkpoint, stop safely.

A stage supplies its model, optimizer, jitted `train_step(model, optimizer, batch, rng)` and an
`evaluate()`; this loop owns everything that must behave the same in all of them:

- resume from the newest complete checkpoint in the workdir (model, optimizer, step, data
  iterator; the per-step RNG is the step folded into the seed's own training stream, so it
  needs no state and never repeats a key that initialization used);
- on SIGTERM (a TPU VM's preemption notice) to any host, all hosts agree on one step through
  JAX's preemption sync point, save it together and exit cleanly;
- with `best_metric`, also checkpoint at every evaluation and keep the best one (Orbax best-N);
- stop on a non-finite loss or gradient norm, naming the step, without saving the bad state;
- TensorBoard + JSON-lines metrics, console progress with steps/s and ETA.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from heartlang_jax import errors
from heartlang_jax.configs import typed
from heartlang_jax.data import input_pipeline
from heartlang_jax.training import checkpointing, metric_writer, parallel

# Folded into the seed before the step, so per-step keys never equal the keys that
# `nnx.Rngs(seed)` hands out at initialization (those fold the draw count into key(seed)).
TRAIN_STREAM = zlib.crc32(b"heartlang_jax.train_step")


class NonFiniteError(errors.HeartLangError, FloatingPointError):
    """The loss or gradient became NaN/inf; the message names the step."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint at `step` was written before stopping."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint saved at step {step}; rerun the same command to resume")
        self.step = step


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the config and the size of the training split."""

    num_train_steps: int
    warmup_steps: int
    steps_per_epoch: int
    eval_every_steps: int
    checkpoint_every_steps: int
    log_every_steps: int

    @classmethod
    def from_config(cls, config, num_train_examples: int, global_batch: int) -> Schedule:
        """`global_batch` is the batch over all devices: the schedule does not depend on them."""
        steps_per_epoch = max(num_train_examples // global_batch, 1)
        total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
        return cls(
            num_train_steps=total,
            warmup_steps=round(config.warmup_epochs * steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            eval_every_steps=config.eval_every_steps or steps_per_epoch,
            checkpoint_every_steps=config.checkpoint_every_steps or steps_per_epoch,
            log_every_steps=max(1, min(config.log_every_steps, total)),
        )


class _Preemption:
    """Whether to save and stop after a step.

    With several processes, JAX's preemption service (started by `jax.distributed.initialize`)
    catches SIGTERM on any host and all hosts agree on the same step through
    `reached_preemption_sync_point`, which every host calls after every step; a per-process flag
    would let hosts disagree and hang the collective save. With one process, a SIGTERM handler
    sets a flag (only the main thread may install it).
    """

    def __init__(self):
        self.raised = False
        self._previous = None
        self._multi = jax.process_count() > 1

    def reached(self, step: int) -> bool:
        if self._multi:
            self.raised = self.raised or multihost_utils.reached_preemption_sync_point(step)
        return self.raised

    def __enter__(self):
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class LoopResult:
    step: int
    last_eval: dict[str, float]
    meta: dict


def _check_finite(step: int, metrics: Mapping[str, float], stage: str) -> None:
    bad = {k: v for k, v in metrics.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
    if bad:
        details = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteError(
            f"[{stage}] non-finite training value at step {step} ({details}). The run stopped; the last "
            "good checkpoint is untouched. Lower the learning rate or check the input data."
        )


def _check_finite_eval(step: int, scores: Mapping[str, float], stage: str) -> None:
    """A non-finite evaluation fails the run; an AUC may be NaN (a class without positives)."""
    bad = {
        k: v
        for k, v in scores.items()
        if np.ndim(v) == 0 and not math.isfinite(float(v)) and not ("auc" in k and math.isnan(float(v)))
    }
    if bad:
        details = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise NonFiniteError(
            f"[{stage}] non-finite evaluation at step {step} ({details}). The run stopped; the last "
            "good checkpoint is untouched."
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jax.dtypes.issubdtype(x.dtype, np.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _check_finite_state(step: int, model: nnx.Module, optimizer: nnx.Optimizer, stage: str) -> None:
    """Never save NaN weights: a finite loss can still come with a NaN parameter (e.g. a NaN
    update to a weight the loss did not reach this step)."""
    for name, state in (("model", nnx.state(model)), ("optimizer", nnx.state(optimizer))):
        if not bool(parallel.to_host(_all_finite(nnx.to_pure_dict(state)))):
            raise NonFiniteError(
                f"[{stage}] non-finite {name} state at step {step}; not saved. The run stopped; the last "
                "good checkpoint is untouched."
            )


def run(
    *,
    stage: str,
    config: Any,
    workdir: str,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    train_step: Callable,
    train_data: grain.MapDataset,
    mesh: jax.sharding.Mesh,
    schedule: Schedule,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    prepare_batch: Callable[[dict], dict] | None = None,
    on_eval: Callable[[int, dict, dict], None] | None = None,
    eval_images: Callable[[int], Mapping[str, np.ndarray]] | None = None,
    reduce_metrics: Callable[[list[dict]], dict[str, float]] | None = None,
    max_to_keep: int = 2,
    best_metric: str | None = None,
) -> LoopResult:
    """Trains to `schedule.num_train_steps`, resuming if the workdir holds checkpoints.

    `on_eval(step, eval_metrics, meta)` may record anything in `meta` (saved with checkpoints),
    e.g. the best validation score so far. `reduce_metrics` turns the host metrics of the steps
    since the last log into scalars (default `mean_metrics`); a stage whose step returns arrays
    (e.g. per-code counts) reduces them over the interval. With `best_metric` (a key of the
    evaluation's scores), every evaluation is also checkpointed with its scores, and the best
    step is kept beside the newest ones; `meta["best_step"]` is left to `on_eval`.
    `eval_images(step)`, called on every process after each evaluation, returns RGB images
    [H, W, 3] ({name: image}) that process 0 writes to TensorBoard.
    """
    parallel.replicate_module(model, mesh)
    parallel.replicate_module(optimizer, mesh)
    checkpoints = checkpointing.RunCheckpoints(workdir, max_to_keep=max_to_keep, best_metric=best_metric)
    writer = metric_writer.MetricWriter(workdir)
    batches: input_pipeline.DevicePrefetcher | None = None
    try:  # the prefetch thread, checkpointer and writer are closed whatever fails below
        iterator = input_pipeline.train_iterator(train_data)
        meta: dict = {}
        restored = checkpoints.restore_latest(model, optimizer)
        if restored is None:
            step = 0
            writer.write_hparams(_flatten(typed.as_dict(config)))
            logging.info("[%s] starting a fresh run in %s", stage, workdir)
        else:
            step, data_state, meta = restored
            iterator.set_state(data_state)
            logging.info("[%s] resumed from the checkpoint at step %d in %s", stage, step, checkpoints.directory)
        meta.pop("step", None)
        base_key = jax.random.fold_in(jax.random.key(config.seed), TRAIN_STREAM)
        progress = metric_writer.Progress(schedule.num_train_steps, first_step=step)
        # (step, device metrics) not yet fetched: fetching every step would stall async dispatch.
        # Every step is checked at the next log/eval/checkpoint boundary, always before a save.
        pending: list[tuple[int, dict]] = []
        last_eval: dict[str, float] = dict(meta.get("last_eval", {}))

        def flush() -> None:
            """Fetches the pending metrics, checks every step's finiteness, logs their mean."""
            if not pending:
                return
            fetched = parallel.to_host([m for _, m in pending])
            for (s, _), values in zip(pending, fetched):
                _check_finite(s, {k: float(v) for k, v in values.items() if np.ndim(v) == 0}, stage)
            scalars = {f"train_{k}": v for k, v in (reduce_metrics or mean_metrics)(fetched).items()}
            pending.clear()
            writer.write_scalars(step, scalars)
            progress.report(step, stage, {k: v for k, v in scalars.items() if k == "train_loss"})

        # The next batches are read, prepared and copied to the devices in a thread while the
        # current step runs; `batches.state` is the iterator position after the last batch taken.
        batches = input_pipeline.DevicePrefetcher(iterator, mesh, prepare_batch)

        def save(at_step: int, scores: dict | None = None) -> None:
            _check_finite_state(at_step, model, optimizer, stage)
            checkpoints.save(at_step, model, optimizer, batches.state, {**meta, "last_eval": last_eval}, scores)

        with _Preemption() as preemption:
            while step < schedule.num_train_steps:
                batch = next(batches)
                rng = jax.random.fold_in(base_key, step)
                metrics = train_step(model, optimizer, batch, rng)
                step += 1
                pending.append((step, metrics))
                if step % schedule.log_every_steps == 0 or step == schedule.num_train_steps:
                    flush()
                done = step == schedule.num_train_steps
                preempted = preemption.reached(step)
                evaluated = False
                if evaluate is not None and (step % schedule.eval_every_steps == 0 or done):
                    flush()
                    last_eval = evaluate(step)
                    _check_finite_eval(step, last_eval, stage)
                    evaluated = True
                    writer.write_scalars(step, last_eval)
                    if eval_images is not None:
                        writer.write_images(step, eval_images(step))
                    logging.info("[%s] eval at step %d: %s", stage, step, _fmt(last_eval))
                    if on_eval is not None:
                        on_eval(step, last_eval, meta)
                if best_metric is not None and evaluated:
                    flush()
                    save(step, {best_metric: last_eval[best_metric]})
                elif step % schedule.checkpoint_every_steps == 0 or done or preempted:
                    flush()
                    save(step)
                if preempted and not done:
                    checkpoints.wait()
                    raise Preempted(step)
    finally:
        if batches is not None:
            batches.close()
        checkpoints.close()  # waits for an asynchronous save still being written
        writer.close()
    return LoopResult(step=step, last_eval=last_eval, meta=meta)


def mean_metrics(fetched: list[dict]) -> dict[str, float]:
    """The mean of each scalar metric over the logged steps."""
    return {k: float(np.mean([np.asarray(m[k]) for m in fetched])) for k in fetched[0]}


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
