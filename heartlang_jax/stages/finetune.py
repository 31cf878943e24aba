"""Downstream fine-tuning (paper §3): one PTB-XL task, linear probing or full fine-tuning.

The encoder comes from a pre-training workdir (`config.init_workdir`: its architecture from that
run's own config, its dropout from this one) or is randomly initialized. One logit per class,
sigmoid + BCE. Validation and test macro AUC are computed every epoch; the epoch with the best
validation AUC is kept in the loop's `meta` (so a resumed run remembers it) and its test AUC is
the reported result, in `<workdir>/result.json`. Scoring the test split at every evaluation gives
the same number as keeping the best epoch's weights and scoring them afterwards.

Linear probing freezes the encoder and runs it in eval mode, so its features are a fixed function
of each record: they are computed once per split and the head trains on them. This is exactly
training a head on a frozen encoder, minus recomputing identical features every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from heartlang_jax import checkpointing
from heartlang_jax import input_pipeline
from heartlang_jax import metrics as metrics_lib
from heartlang_jax import optim
from heartlang_jax import parallel
from heartlang_jax import ptbxl
from heartlang_jax import train_loop
from heartlang_jax.models import EcgClassifier, MaskedEcgModel, classifier_bce_loss
from heartlang_jax.stages import common
from heartlang_jax.stages import pretrain

STAGE = "finetune"
MODES = ("linear", "full")
IDENTITY_FIELDS = (
    "stage", "task", "mode", "label_fraction", "seed", "init_workdir", "encoder", "data.builder_config"
)
RESULT_FILE = "result.json"
SPLITS = ("train", "validation", "test")
# The parameters linear probing trains.
HEAD = nnx.All(nnx.Param, nnx.PathContains("head"))
# Encoder fields that are this run's choice even when the architecture comes from a pre-trained run.
REGULARIZATION_FIELDS = ("dropout_rate", "attention_dropout_rate")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails on a bad task, mode or label fraction before any data is read."""
    if config.task not in ptbxl.TASKS:
        raise ValueError(f"config.task must be one of {ptbxl.TASKS}, got {config.task!r}")
    if config.mode not in MODES:
        raise ValueError(f"config.mode must be one of {MODES}, got {config.mode!r}")
    if not 0.0 < config.label_fraction <= 1.0:
        raise ValueError(f"config.label_fraction must be in (0, 1], got {config.label_fraction!r}")


def check_init_workdir(init_workdir: str) -> None:
    """The pre-training run named by config.init_workdir exists and has saved a step (cheap checks)."""
    try:
        stage = checkpointing.load_run_config(init_workdir).get("stage")
    except checkpointing.CheckpointError as e:
        raise checkpointing.CheckpointError(f"config.init_workdir: {e}") from e
    if stage != pretrain.STAGE:
        raise checkpointing.CheckpointError(
            f"config.init_workdir: {init_workdir} holds a {stage!r} run, not a {pretrain.STAGE!r} run"
        )
    directory = pathlib.Path(init_workdir) / checkpointing.CHECKPOINT_DIR
    if not (directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())):
        raise checkpointing.CheckpointError(f"config.init_workdir: {directory} holds no saved step of the pre-training run")


def _vocab_size(run_config: ml_collections.ConfigDict, init_workdir: str) -> int:
    """The LM head's size, needed to rebuild the pre-training model before restoring it."""
    try:
        return int(checkpointing.load_run_config(run_config.vqhbr_workdir).model.num_codes)
    except checkpointing.CheckpointError as e:
        raise checkpointing.CheckpointError(
            f"the pre-training run in {init_workdir} names vqhbr_workdir={run_config.vqhbr_workdir!r}, "
            f"whose config gives the vocabulary size; it cannot be read from here ({e})"
        ) from e


def load_pretrained(init_workdir: str, dtype: str) -> MaskedEcgModel:
    """The pre-trained model of a workdir, rebuilt from that run's own config and restored."""
    check_init_workdir(init_workdir)
    run_config = checkpointing.load_run_config(init_workdir)
    run_config.dtype = dtype  # parameters are float32 either way; compute in this run's dtype
    model = pretrain.build_model(run_config, _vocab_size(run_config, init_workdir))
    step = checkpointing.load_model_from_run(init_workdir, model, what="pre-training checkpoint")
    logging.info("[%s] encoder initialized from %s (step %d)", STAGE, init_workdir, step)
    return model


def transfer_encoder(source: nnx.Module, target: nnx.Module) -> None:
    """Copies the encoder parameters of `source` into `target`; both must have the same encoder."""
    have = nnx.state(source.encoder, nnx.Param)
    have_shapes, want_shapes = _shapes(have), _shapes(nnx.state(target.encoder, nnx.Param))
    if have_shapes != want_shapes:
        differing = sorted(k for k in have_shapes.keys() | want_shapes.keys() if have_shapes.get(k) != want_shapes.get(k))
        raise checkpointing.CheckpointError(
            f"the pre-trained encoder does not match the classifier's encoder at {len(differing)} parameter(s), "
            f"e.g. {differing[:3]}: {[have_shapes.get(k) for k in differing[:3]]} vs "
            f"{[want_shapes.get(k) for k in differing[:3]]}"
        )
    nnx.update(target.encoder, have)


def _shapes(state) -> dict[str, tuple]:
    return {jax.tree_util.keystr(p): (x.shape, x.dtype) for p, x in jax.tree_util.tree_leaves_with_path(state)}


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> EcgClassifier:
    """The classifier; its encoder pre-trained (config.init_workdir) or random."""
    dtype = common.compute_dtype(config)
    if not config.init_workdir:
        encoder = common.ecgformer_config(config.encoder, dtype)
        return EcgClassifier(encoder, num_classes, rngs=nnx.Rngs(config.seed))
    pretrained = load_pretrained(os.path.abspath(config.init_workdir), dtype)
    encoder = dataclasses.replace(
        pretrained.encoder.config, **{name: config.encoder[name] for name in REGULARIZATION_FIELDS}
    )
    model = EcgClassifier(encoder, num_classes, rngs=nnx.Rngs(config.seed))
    transfer_encoder(pretrained, model)
    return model


@nnx.jit
def linear_train_step(model: EcgClassifier, optimizer: nnx.Optimizer, batch, rng):
    """Linear probing: the head on precomputed frozen-encoder features; only the head has grads."""
    del rng  # no randomness: the encoder is frozen in eval mode, the head has no dropout

    def loss_fn(model):
        return classifier_bce_loss(model.head(batch["features"]), batch["labels"])

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, HEAD))(model)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}


@nnx.jit
def full_train_step(model: EcgClassifier, optimizer: nnx.Optimizer, batch, rng):
    """Full fine-tuning: every parameter, dropout from the model's own Rngs."""
    del rng

    def loss_fn(model):
        return classifier_bce_loss(model(batch["words"], batch["lead_ids"], batch["time_ids"]), batch["labels"])

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}


@nnx.jit
def _features(model: EcgClassifier, batch):
    return model.features(batch["words"], batch["lead_ids"], batch["time_ids"])  # [B, D]


@nnx.jit
def _logits(model: EcgClassifier, batch):
    return model(batch["words"], batch["lead_ids"], batch["time_ids"])  # [B, C]


@nnx.jit
def _head_logits(model: EcgClassifier, features):
    return model.head(features)  # [N, C]


def predict(model: EcgClassifier, fn, source, task: str, batch_size: int, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source indices [N], labels [N, C], fn outputs [N, ...]) over a split's labelled records, eval mode."""
    model.eval()
    indices, labels, outputs = [], [], []
    for batch in input_pipeline.eval_batches(source, batch_size=batch_size, task=task):
        out = np.asarray(jax.device_get(fn(model, parallel.shard_batch(batch, mesh))))
        rows = batch["mask"]
        indices.append(batch["index"][rows])
        labels.append(batch["labels"][rows])
        outputs.append(out[rows])
    model.train()
    return np.concatenate(indices), np.concatenate(labels), np.concatenate(outputs)


def split_metrics(prefix: str, labels: np.ndarray, logits: np.ndarray, class_names) -> dict[str, float]:
    """Macro AUC and BCE of one split's logits [N, C]."""
    logits = logits.astype(np.float64)
    bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {f"{prefix}auc": metrics_lib.macro_auc(labels, logits, class_names), f"{prefix}loss": float(bce)}


def _record_best(steps_per_epoch: int):
    """on_eval: keeps the best validation AUC so far and the test AUC of that evaluation in `meta`."""

    def on_eval(step: int, scores: dict, meta: dict) -> None:
        val = scores["eval_auc"]
        if math.isfinite(val) and val > meta.get("best_val_auc", -math.inf):
            meta.update(
                best_val_auc=val,
                best_test_auc=scores["eval_test_auc"],
                best_step=step,
                best_epoch=math.ceil(step / steps_per_epoch),
            )
            logging.info("[%s] new best validation macro AUC %.4f at step %d", STAGE, val, step)

    return on_eval


def _write_json(path: pathlib.Path, payload: dict) -> None:
    if jax.process_index() != 0:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _batch_size(config: ml_collections.ConfigDict, num_examples: int) -> int:
    """Per-device batch, lowered when a small label fraction has fewer records than one batch."""
    per_device = min(config.per_device_batch_size, num_examples // jax.device_count())
    if per_device < 1:
        raise ValueError(
            f"task {config.task} at label_fraction={config.label_fraction} leaves {num_examples} training "
            f"records, fewer than the {jax.device_count()} devices"
        )
    if per_device < config.per_device_batch_size:
        logging.warning(
            "[%s] only %d training records: per-device batch lowered from %d to %d",
            STAGE, num_examples, config.per_device_batch_size, per_device,
        )
    return per_device


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    validate_config(config)
    if config.init_workdir:
        check_init_workdir(os.path.abspath(config.init_workdir))
    builder, sources = common.open_dataset(config, workdir)
    return finetune(config, workdir, sources, builder.info.metadata["classes"][config.task])


def finetune(config: ml_collections.ConfigDict, workdir: str | os.PathLike, sources, class_names) -> dict:
    """Trains and evaluates on `sources` ({split: indexable examples}); writes and returns the result."""
    validate_config(config)
    workdir = os.fspath(workdir)
    checkpointing.claim_workdir(workdir, config, IDENTITY_FIELDS)
    task, seed = config.task, config.seed
    mesh = parallel.make_mesh()
    num_train = len(
        input_pipeline.label_fraction_subset(
            input_pipeline.labelled_indices(sources["train"], task), config.label_fraction, seed
        )
    )
    per_device = _batch_size(config, num_train)
    batch_size = per_device * jax.local_device_count()
    train_data = input_pipeline.train_dataset(
        sources["train"], batch_size=batch_size, seed=seed, task=task, label_fraction=config.label_fraction
    )
    schedule = train_loop.Schedule.from_config(config, num_train, per_device * jax.device_count())
    logging.info(
        "[%s] %s, %s, label fraction %g: %d training records, %d steps",
        STAGE, task, config.mode, config.label_fraction, num_train, schedule.num_train_steps,
    )

    model = build_model(config, len(class_names))
    parallel.replicate_module(model, mesh)
    opt_cfg = config.optimizer[config.mode]
    if config.mode == "linear":
        frozen = {split: predict(model, _features, sources[split], task, batch_size, mesh) for split in SPLITS}
        train_index, _, train_features = frozen["train"]
        features_by_index = np.zeros((len(sources["train"]), train_features.shape[-1]), np.float32)
        features_by_index[train_index] = train_features
        tx = optim.make_optimizer(opt_cfg, num_train_steps=schedule.num_train_steps, warmup_steps=schedule.warmup_steps)
        optimizer = nnx.Optimizer(model, tx, wrt=HEAD)
        train_step = linear_train_step

        def prepare(batch):
            return {"features": features_by_index[batch["index"]], "labels": batch["labels"]}

        def logits_of(split):
            _, labels, features = frozen[split]
            return labels, np.asarray(jax.device_get(_head_logits(model, features)))

    else:
        scales = optim.layer_decay_scales(model, opt_cfg.layer_decay) if opt_cfg.layer_decay < 1.0 else None
        tx = optim.make_optimizer(
            opt_cfg, num_train_steps=schedule.num_train_steps, warmup_steps=schedule.warmup_steps, lr_scales=scales
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        train_step, prepare = full_train_step, None

        def logits_of(split):
            _, labels, logits = predict(model, _logits, sources[split], task, batch_size, mesh)
            return labels, logits

    def evaluate(step: int) -> dict[str, float]:
        del step
        return {
            **split_metrics("eval_", *logits_of("validation"), class_names),
            **split_metrics("eval_test_", *logits_of("test"), class_names),
        }

    result = train_loop.run(
        stage=STAGE,
        config=config,
        workdir=workdir,
        model=model,
        optimizer=optimizer,
        train_step=train_step,
        train_data=train_data,
        mesh=mesh,
        schedule=schedule,
        evaluate=evaluate,
        prepare_batch=prepare,
        on_eval=_record_best(schedule.steps_per_epoch),
        max_to_keep=1,
    )
    meta = result.meta
    summary = {
        "task": task,
        "mode": config.mode,
        "label_fraction": config.label_fraction,
        "seed": seed,
        "init": os.path.abspath(config.init_workdir) if config.init_workdir else "random",
        "num_train_records": num_train,
        "num_train_steps": schedule.num_train_steps,
        "best_epoch": meta.get("best_epoch"),
        "best_step": meta.get("best_step"),
        "val_auc": meta.get("best_val_auc"),
        "test_auc": meta.get("best_test_auc"),
        "final_val_auc": result.last_eval.get("eval_auc"),
        "final_test_auc": result.last_eval.get("eval_test_auc"),
    }
    if summary["val_auc"] is None:
        logging.warning("[%s] no evaluation gave a finite validation macro AUC; no best epoch", STAGE)
    _write_json(pathlib.Path(workdir) / RESULT_FILE, summary)
    logging.info(
        "[%s] best validation macro AUC %s at epoch %s; its test macro AUC %s",
        STAGE, summary["val_auc"], summary["best_epoch"], summary["test_auc"],
    )
    return summary
