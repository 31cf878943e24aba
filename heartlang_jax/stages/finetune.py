"""Downstream fine-tuning (paper §3): one PTB-XL task, linear probing or full fine-tuning.

The encoder comes from a pre-training run folder (`config.init_workdir`: its architecture from
that folder's `model.json`, its dropout from this config) or is randomly initialized. One logit
per class, sigmoid + BCE. Validation macro AUC is computed every epoch and each evaluation is
checkpointed with it; Orbax keeps the best one (best-N preservation) beside the newest. At the
end the best weights are restored and the test macro AUC is measured on them, into
`<workdir>/result.json`; the per-record test labels and scores go to `<workdir>/test_scores.npz`,
from which the sweep bootstraps an interval over the test records. Any task the dataset declares
(its `metadata["classes"]`) can be used.

`model.pos_weight` weights each class's positive BCE term ("balanced": n_negative / n_positive
over the training examples). `result.json` also holds per-class figures of the validation and
test splits (AUROC, AUPRC; F1, sensitivity, specificity at thresholds chosen on validation by
`metrics.choose_thresholds`), and the thresholds go to `<workdir>/thresholds.json`. On a dataset
whose records are cut into windows (`csv`), each window trains as an example and validation and
test are scored per record: the mean of its windows' probabilities.

The two modes are two strategies with the same methods (`STRATEGIES`): `LinearProbe` freezes the
encoder and runs it in eval mode, so its features are a fixed function of each record: they are
computed once per split and the head trains on them (exactly training a head on a frozen encoder,
minus recomputing identical features every epoch); `FullFinetune` trains every parameter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import typing
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from heartlang_jax import atomic_file, errors, stages
from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.evaluation import metrics as metrics_lib
from heartlang_jax.inference import model_info
from heartlang_jax.models import EcgClassifier, MaskedEcgModel, classifier_bce_loss
from heartlang_jax.stages import common, pretrain
from heartlang_jax.training import checkpointing, optim, parallel

STAGE = stages.name_of(schema.FinetuneStage)
IDENTITY_FIELDS = (
    "stage",
    "task",
    "mode",
    "label_fraction",
    "seed",
    "init_workdir",
    "encoder",
    "data.dataset",
    "data.builder_config",
)
RESULT_FILE = "result.json"
TEST_SCORES_FILE = "test_scores.npz"
# The per-class decision thresholds chosen on the validation split, read by `predict`:
# {"classes": [...], "thresholds": [...], "rule": "..."}.
THRESHOLDS_FILE = "thresholds.json"
SPLITS = ("train", "validation", "test")
# Datasets whose every example is labelled, with or without a positive class.
ALL_LABELLED = ("csv",)
# The parameters linear probing trains.
HEAD = nnx.All(nnx.Param, nnx.PathContains("head"))
# Encoder fields that are this run's choice even when the architecture comes from a pre-trained run.
REGULARIZATION_FIELDS = ("dropout_rate", "attention_dropout_rate")


def load_pretrained(init_workdir: str, dtype: str) -> MaskedEcgModel:
    """The pre-trained model of a run folder, rebuilt from its own model.json and restored."""
    try:
        _, model, step = model_info.load_model(init_workdir, dtype=dtype, expect_kind=pretrain.STAGE)
    except errors.CheckpointError as e:
        raise errors.CheckpointError(f"config.init_workdir: {e}") from e
    logging.info("[%s] encoder initialized from %s (step %d)", STAGE, init_workdir, step)
    return model


def transfer_encoder(source: Any, target: Any) -> None:
    """Copies the encoder parameters of `source` into `target`; both must have the same encoder."""
    have = nnx.state(source.encoder, nnx.Param)
    have_shapes, want_shapes = _shapes(have), _shapes(nnx.state(target.encoder, nnx.Param))
    if have_shapes != want_shapes:
        differing = sorted(
            k for k in have_shapes.keys() | want_shapes.keys() if have_shapes.get(k) != want_shapes.get(k)
        )
        raise checkpointing.CheckpointError(
            f"the pre-trained encoder does not match the classifier's encoder at {len(differing)} parameter(s), "
            f"e.g. {differing[:3]}: {[have_shapes.get(k) for k in differing[:3]]} vs "
            f"{[want_shapes.get(k) for k in differing[:3]]}"
        )
    nnx.update(target.encoder, have)


def _shapes(state) -> dict[str, tuple]:
    return {jax.tree_util.keystr(p): (x.shape, x.dtype) for p, x in jax.tree_util.tree_leaves_with_path(state)}


def build_model(config: schema.FinetuneStage, num_classes: int, sentence: Mapping | None = None) -> EcgClassifier:
    """The classifier; its encoder pre-trained (config.init_workdir) or random, for sentences of
    the dataset's `sentence` spec (None = the 256 x 96 default)."""
    dtype = common.compute_dtype(config)
    if not config.init_workdir:
        encoder = common.ecgformer_config(config.encoder, dtype, sentence)
        return EcgClassifier(encoder, num_classes, rngs=nnx.Rngs(config.seed))
    pretrained = load_pretrained(os.fspath(checkpointing.absolute(config.init_workdir)), dtype)
    have = pretrained.encoder.config
    if sentence is not None and (have.max_len, have.token_len) != (sentence["max_len"], sentence["token_len"]):
        raise errors.CheckpointError(
            f"config.init_workdir: its encoder reads sentences of {have.max_len} words x {have.token_len} samples, "
            f"the dataset's are {sentence['max_len']} x {sentence['token_len']}"
        )
    encoder = dataclasses.replace(
        pretrained.encoder.config, **{name: getattr(config.encoder, name) for name in REGULARIZATION_FIELDS}
    )
    model = EcgClassifier(encoder, num_classes, rngs=nnx.Rngs(config.seed))
    transfer_encoder(pretrained, model)
    return model


@nnx.jit(donate_argnums=(0, 1))
def linear_train_step(model: EcgClassifier, optimizer: nnx.Optimizer, batch, rng):
    """Linear probing: the head on precomputed frozen-encoder features; only the head has grads."""
    del rng  # no randomness: the encoder is frozen in eval mode, the head has no dropout

    def loss_fn(model):
        return classifier_bce_loss(model.head(batch["features"]), batch["labels"], batch.get("pos_weight"))

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, HEAD))(model)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": optax.tree.norm(grads)}


@nnx.jit(donate_argnums=(0, 1))
def full_train_step(model: EcgClassifier, optimizer: nnx.Optimizer, batch, rng):
    """Full fine-tuning: every parameter, dropout from the model's own Rngs."""
    del rng

    def loss_fn(model):
        logits = model(batch["words"], batch["lead_ids"], batch["time_ids"])
        return classifier_bce_loss(logits, batch["labels"], batch.get("pos_weight"))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": optax.tree.norm(grads)}


@nnx.jit
def _features(model: EcgClassifier, batch):
    return model.features(batch["words"], batch["lead_ids"], batch["time_ids"])  # [B, D]


@nnx.jit
def _logits(model: EcgClassifier, batch):
    return model(batch["words"], batch["lead_ids"], batch["time_ids"])  # [B, C]


@nnx.jit
def _head_logits(model: EcgClassifier, features):
    return model.head(features)  # [N, C]


def predict(
    model: EcgClassifier, fn, source, task: str, global_batch: int, mesh, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source indices [N], labels [N, C], fn outputs [N, ...]) over a split's labelled records
    (`indices`, found by `input_pipeline.labelled_indices` when None), eval mode.

    Each host runs its rows; outputs and rows are gathered from all hosts, in the split's order.
    """
    model.eval()
    index_parts, labels, outputs = [], [], []
    for batch in input_pipeline.eval_batches(source, global_batch=global_batch, task=task, indices=indices):
        out = parallel.to_host(fn(model, parallel.shard_batch(batch, mesh)))
        index, label, rows = parallel.gather_host_rows((batch["index"], batch["labels"], batch["mask"]))
        index_parts.append(index[rows])
        labels.append(label[rows])
        outputs.append(out[rows])
    model.train()
    return np.concatenate(index_parts), np.concatenate(labels), np.concatenate(outputs)


def split_metrics(prefix: str, labels: np.ndarray, logits: np.ndarray, class_names) -> dict[str, float]:
    """Macro AUC and BCE of one split's logits [N, C]."""
    logits = logits.astype(np.float64)
    bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {f"{prefix}auc": metrics_lib.macro_auc(labels, logits, class_names), f"{prefix}loss": float(bce)}


def pos_weights(config: schema.FinetuneStage, train_labels: np.ndarray | None, class_names) -> np.ndarray | None:
    """The BCE's per-class positive weights [C] of `config.model.pos_weight` (None = plain BCE):
    "balanced" is n_negative / n_positive of each class over the training examples
    (`train_labels` [N, C]), 1 for a class without a positive (its positive term never occurs);
    a list must have one weight per class."""
    choice = schema.parse_pos_weight(config.model.pos_weight)
    if choice == "none":
        return None
    if choice == "balanced":
        assert train_labels is not None
        positives = (np.asarray(train_labels) > 0.5).sum(axis=0).astype(np.float64)
        negatives = len(train_labels) - positives
        absent = [name for name, n in zip(class_names, positives) if n == 0]
        if absent:
            logging.warning("[%s] pos_weight=balanced: no training positive of %s; their weight is 1", STAGE, absent)
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    else:
        weights = np.asarray(choice, np.float64)
        if len(weights) != len(class_names):
            raise errors.ConfigError(
                f"config.model.pos_weight has {len(weights)} weights, task {config.task} has {len(class_names)} "
                f"classes ({', '.join(class_names)})"
            )
    logging.info("[%s] BCE positive weights: %s", STAGE, dict(zip(class_names, np.round(weights, 4).tolist())))
    return weights.astype(np.float32)


def window_records(source, index: np.ndarray) -> np.ndarray | None:
    """The record id of each example of `index`, when the dataset cuts records into windows
    (its examples carry `window`); None otherwise (one example per record)."""
    if not len(index) or "window" not in source[int(index[0])]:
        return None
    return np.asarray([int(source[int(i)]["record_id"]) for i in index], np.int64)


def per_record(records: np.ndarray | None, index, labels, logits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A windowed split's scores per record: (record ids, labels, logit of the mean of the
    windows' probabilities), records in order of first appearance. Unchanged without windows."""
    if records is None:
        return index, labels, logits
    ids, first, inverse = np.unique(records, return_index=True, return_inverse=True)
    probabilities = 0.5 + 0.5 * np.tanh(0.5 * np.asarray(logits, np.float64))  # sigmoid
    mean = np.zeros((len(ids), probabilities.shape[1]))
    np.add.at(mean, inverse, probabilities)
    mean /= np.bincount(inverse, minlength=len(ids))[:, None]
    mean = np.clip(mean, 1e-12, 1 - 1e-12)
    order = np.argsort(first, kind="stable")
    return ids[order], np.asarray(labels)[first][order], (np.log(mean) - np.log1p(-mean))[order]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * np.asarray(logits, np.float64))


def write_test_scores(path, index: np.ndarray, labels: np.ndarray, logits: np.ndarray, class_names) -> None:
    """The test split's per-record labels and scores of the reported weights, as `.npz`:
    `index` [N] (position in the split), `labels` [N, C], `logits` [N, C], `probabilities` [N, C]
    (sigmoid of the logits) and `class_names` [C]. Process 0 writes a temporary name, then renames.

    The sweep bootstraps its interval from the logits: AUCs are unchanged by the sigmoid, but
    float32 probabilities round large logits to 1.0 and would add ties the reported AUC lacks.
    """
    if jax.process_index() != 0:
        return
    logits = np.asarray(logits, np.float32)
    with atomic_file.atomic_open(path) as f:
        np.savez(
            f,
            index=np.asarray(index, np.int64),
            labels=np.asarray(labels, np.float32),
            logits=logits,
            probabilities=(0.5 + 0.5 * np.tanh(0.5 * logits.astype(np.float64))).astype(np.float32),  # sigmoid
            class_names=np.asarray(list(class_names), dtype=str),
        )


def write_thresholds(path, class_names, thresholds: np.ndarray) -> None:
    """`thresholds.json` (process 0, atomic): the classes, their thresholds and the rule."""
    if jax.process_index() != 0:
        return
    payload = {
        "classes": list(class_names),
        "thresholds": [float(t) for t in thresholds],
        "rule": metrics_lib.THRESHOLD_RULE,
    }
    checkpointing.atomic_write_text(path, json.dumps(payload, indent=2))


def _record_best(steps_per_epoch: int):
    """on_eval: keeps the best validation AUC so far and its step in `meta` (saved with checkpoints)."""

    def on_eval(step: int, scores: dict, meta: dict) -> None:
        val = scores["eval_auc"]
        if math.isfinite(val) and val > meta.get("best_val_auc", -math.inf):
            meta.update(best_val_auc=val, best_step=step, best_epoch=math.ceil(step / steps_per_epoch))
            logging.info("[%s] new best validation macro AUC %.4f at step %d", STAGE, val, step)

    return on_eval


def _global_batch(config: schema.FinetuneStage, num_examples: int) -> int:
    """The global batch, lowered (to a multiple of the device count) when a small label fraction
    has fewer records than one batch."""
    devices = jax.device_count()
    batch = min(config.batch_size, num_examples // devices * devices)
    if batch < 1:
        raise errors.ConfigError(
            f"config.label_fraction={config.label_fraction} leaves {num_examples} training records of task "
            f"{config.task}, fewer than the {devices} devices"
        )
    if batch < config.batch_size:
        logging.warning(
            "[%s] only %d training records: global batch lowered from %d to %d",
            STAGE,
            num_examples,
            config.batch_size,
            batch,
        )
    return batch


def task_classes(builder, task: str) -> list[str]:
    """The class names of a task the dataset declares; a one-line error naming the field otherwise."""
    classes = builder.info.metadata["classes"]
    if task not in classes:
        raise errors.ConfigError(
            f"config.task={task!r} is not a task of {builder.name}; its tasks are {sorted(classes)}"
        )
    return list(classes[task])


class LinearProbe:
    """Linear probing: the encoder frozen in eval mode, so its features are a fixed function of
    each record. They are computed once per split and only the head trains on them."""

    wrt = HEAD
    train_step = staticmethod(linear_train_step)

    def __init__(self, model: EcgClassifier, sources: Mapping, labelled: Mapping, task: str, global_batch: int, mesh):
        self.model, self.mesh = model, mesh
        self.frozen = {
            split: predict(model, _features, sources[split], task, global_batch, mesh, labelled[split])
            for split in SPLITS
        }
        train_index, _, train_features = self.frozen["train"]
        self.features_by_index = np.zeros((len(sources["train"]), train_features.shape[-1]), np.float32)
        self.features_by_index[train_index] = train_features

    def lr_scales(self, optimizer: schema.OptimizerConfig):
        return None

    def prepare_batch(self, batch: dict) -> dict:
        return {"features": self.features_by_index[batch["index"]], "labels": batch["labels"]}

    def with_pos_weight(self, prepare, weights: np.ndarray | None):
        return _with_pos_weight(prepare, weights)

    def logits(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index, labels, features = self.frozen[split]
        return index, labels, parallel.to_host(_head_logits(self.model, parallel.replicate(features, self.mesh)))


class FullFinetune:
    """Full fine-tuning: every parameter trains, with layer-wise learning-rate decay."""

    wrt = nnx.Param
    train_step = staticmethod(full_train_step)
    prepare_batch = None

    def with_pos_weight(self, prepare, weights: np.ndarray | None):
        return _with_pos_weight(prepare, weights)

    def __init__(self, model: EcgClassifier, sources: Mapping, labelled: Mapping, task: str, global_batch: int, mesh):
        self.model, self.sources, self.labelled, self.task = model, sources, labelled, task
        self.global_batch, self.mesh = global_batch, mesh

    def lr_scales(self, optimizer: schema.OptimizerConfig):
        decay = getattr(optimizer, "layer_decay", 1.0)
        return optim.layer_decay_scales(self.model, decay) if decay < 1.0 else None

    def logits(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return predict(
            self.model, _logits, self.sources[split], self.task, self.global_batch, self.mesh, self.labelled[split]
        )


def _with_pos_weight(prepare, weights: np.ndarray | None):
    """`prepare` (a batch -> batch, or None), also giving every row the BCE's positive weights."""
    if weights is None:
        return prepare

    def prepared(batch: dict) -> dict:
        batch = prepare(batch) if prepare is not None else batch
        return {**batch, "pos_weight": np.broadcast_to(weights, batch["labels"].shape).copy()}

    return prepared


# config.mode -> how that mode trains and scores (the modes of schema.FinetuneMode).
STRATEGIES: dict[str, type[LinearProbe] | type[FullFinetune]] = {"linear": LinearProbe, "full": FullFinetune}
assert set(STRATEGIES) == set(typing.get_args(schema.FinetuneMode))


def train_and_evaluate(config: schema.FinetuneStage, workdir: str | os.PathLike) -> dict:
    """Trains and evaluates one cell on the config's dataset; writes and returns its result."""
    config = schema.validate(config)  # a ConfigDict from a notebook is judged here; a typed one passes
    if config.init_workdir:  # a missing run fails before any data is read
        try:
            model_info.read(checkpointing.absolute(config.init_workdir))
        except errors.CheckpointError as e:
            raise errors.CheckpointError(f"config.init_workdir: {e}") from e
    builder, sources = common.open_dataset(config.data, workdir)
    return finetune(config, workdir, sources, task_classes(builder, config.task), common.DatasetInfo.of(builder))


def finetune(config: schema.FinetuneStage, workdir, sources: dict, class_names, dataset: common.DatasetInfo) -> dict:
    """Trains and evaluates on `sources` ({split: indexable examples}); writes and returns the result."""
    task, seed = config.task, config.seed
    # Each split's labelled examples, found once (reading a split's labels visits every example).
    # A CSV's rows are all labelled, a row without a positive class too (its negatives are data).
    every = dataset.name.split("/")[0] in ALL_LABELLED
    labelled = {
        split: np.arange(len(sources[split])) if every else input_pipeline.labelled_indices(sources[split], task)
        for split in SPLITS
    }
    train_records = window_records(sources["train"], labelled["train"]) if config.label_fraction < 1 else None
    train_indices = input_pipeline.label_fraction_subset(labelled["train"], config.label_fraction, seed, train_records)
    num_train = len(train_indices)
    ctx = common.prepare(
        STAGE, config, workdir, IDENTITY_FIELDS, global_batch=_global_batch(config, num_train), data=(dataset, sources)
    )
    train_data = input_pipeline.train_dataset(
        sources["train"], global_batch=ctx.global_batch, seed=seed, task=task, indices=train_indices
    )
    logging.info(
        "[%s] %s, %s, label fraction %g: %d training records",
        STAGE,
        task,
        config.mode,
        config.label_fraction,
        num_train,
    )

    model = build_model(config, len(class_names), dataset.sentence)
    common.write_model_info(ctx, STAGE, model, task=task, class_names=tuple(class_names))
    parallel.replicate_module(model, ctx.mesh)
    opt_cfg = config.optimizer.of(config.mode)
    global_batch = ctx.global_batch
    strategy = STRATEGIES[config.mode](model, sources, labelled, task, global_batch, ctx.mesh)
    balanced = config.model.pos_weight == "balanced"  # reads the training labels only then
    train_labels = np.stack([np.asarray(sources["train"][int(i)][task]) for i in train_indices]) if balanced else None
    weights = pos_weights(config, train_labels, class_names)
    # A windowed (csv) dataset is scored per record: the mean of its windows' probabilities.
    records = {split: window_records(sources[split], labelled[split]) for split in ("validation", "test")}

    def split_logits(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index, labels, logits = strategy.logits(split)
        return per_record(records[split], index, labels, logits)

    def scores(prefix: str, split: str) -> dict[str, float]:
        _, labels, logits = split_logits(split)
        return split_metrics(prefix, labels, logits, class_names)

    result = common.train(
        ctx,
        model=model,
        optimizer_config=opt_cfg,
        train_data=train_data,
        num_train_examples=num_train,
        # The test AUC of every evaluation is logged for the learning curve; the reported one is
        # measured again on the restored best weights below (and equals the logged one).
        evaluate=lambda step: {**scores("eval_", "validation"), **scores("eval_test_", "test")},
        prepare_batch=strategy.with_pos_weight(strategy.prepare_batch, weights),
        on_eval=_record_best(max(num_train // global_batch, 1)),
        max_to_keep=1,
        best_metric="eval_auc",
        wrt=strategy.wrt,
        train_step=strategy.train_step,
        lr_scales=strategy.lr_scales(opt_cfg),
    )
    meta = result.meta
    best_step = meta.get("best_step")
    if best_step is None:
        logging.warning("[%s] no evaluation gave a finite validation macro AUC; scoring the last weights", STAGE)
    else:
        checkpoints = checkpointing.RunCheckpoints(ctx.workdir, read_only=True)
        checkpoints.restore(best_step, model, None)
        checkpoints.close()
    _, val_labels, val_logits = split_logits("validation")
    thresholds = metrics_lib.choose_thresholds(val_labels, _sigmoid(val_logits))
    write_thresholds(ctx.workdir / THRESHOLDS_FILE, class_names, thresholds)
    test_index, test_labels, test_logits = split_logits("test")
    test = split_metrics("test_", test_labels, test_logits, class_names)
    write_test_scores(ctx.workdir / TEST_SCORES_FILE, test_index, test_labels, test_logits, class_names)
    per_class = {
        "validation": metrics_lib.per_class_metrics(val_labels, _sigmoid(val_logits), thresholds, class_names),
        "test": metrics_lib.per_class_metrics(test_labels, _sigmoid(test_logits), thresholds, class_names),
    }
    summary = {
        "dataset": ctx.dataset.name,
        "task": task,
        "mode": config.mode,
        "label_fraction": config.label_fraction,
        "seed": seed,
        "init": os.fspath(checkpointing.absolute(config.init_workdir)) if config.init_workdir else "random",
        "num_train_records": num_train,
        "num_train_steps": result.step,
        "best_epoch": meta.get("best_epoch"),
        "best_step": best_step,
        "val_auc": meta.get("best_val_auc"),
        "test_auc": test["test_auc"],
        "final_val_auc": result.last_eval.get("eval_auc"),
        "pos_weight": None if weights is None else dict(zip(class_names, weights.astype(float).tolist())),
        "threshold_rule": metrics_lib.THRESHOLD_RULE,
        "per_class": per_class,
    }
    if records["test"] is not None:
        summary["num_test_windows"] = len(records["test"])
        summary["num_test_records"] = len(test_index)
    checkpointing.atomic_write_text(ctx.workdir / RESULT_FILE, json.dumps(summary, indent=2, sort_keys=True))
    logging.info(
        "[%s] best validation macro AUC %s at epoch %s; test macro AUC of those weights %s",
        STAGE,
        summary["val_auc"],
        summary["best_epoch"],
        summary["test_auc"],
    )
    return summary
