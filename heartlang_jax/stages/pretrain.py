"""Masked ECG-sentence pre-training (paper §2.4): predict the vocabulary index of masked words.

The targets come from the frozen VQ-HBR tokenizer, computed with the lead and time ids (the
released code omits them, a bug). They do not depend on the mask, so they are computed once per
sentence and cached in the workdir as an array indexed by example, not at every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from heartlang_jax import atomic_file, errors, stages
from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.inference import model_info
from heartlang_jax.models import VQHBR, MaskedEcgModel, masked_lm_loss
from heartlang_jax.stages import common, vqhbr
from heartlang_jax.training import checkpointing, parallel

STAGE = stages.name_of(schema.PretrainStage)
IDENTITY_FIELDS = (
    "stage",
    "model",
    "data.dataset",
    "data.builder_config",
    "data.mixture",
    "vqhbr_workdir",
    "train_splits",
)
TARGETS_DIR = "targets"
# The evaluation masks' own stream: never a key that initialization or training draws.
EVAL_MASK_STREAM = zlib.crc32(b"heartlang_jax.pretrain.eval_mask")


def build_model(config: schema.PretrainStage, vocab_size: int, sentence: Mapping | None = None) -> MaskedEcgModel:
    encoder = common.ecgformer_config(config.model.encoder, common.compute_dtype(config), sentence)
    return MaskedEcgModel(encoder, vocab_size, rngs=nnx.Rngs(config.seed))


def vocabulary_matching_data(config: schema.PretrainStage, token_len: int) -> VQHBR:
    """The frozen VQ-HBR model named by the config, checked against the data before any compute."""
    vocabulary = vqhbr.restore_vocabulary(os.fspath(checkpointing.absolute(config.vqhbr_workdir)))
    if vocabulary.config.encoder.token_len != token_len:
        raise errors.CheckpointError(
            f"config.vqhbr_workdir: the vocabulary in {config.vqhbr_workdir} reads words of "
            f"{vocabulary.config.encoder.token_len} samples, the data's words have {token_len}"
        )
    return vocabulary


def carry_vocabulary(vocabulary: VQHBR, vqhbr_workdir: str, workdir) -> None:
    """Copies the vocabulary into `<workdir>/vocabulary/` (its model.json and a model-only
    checkpoint of the step in use), so the run folder alone gives word ids after the VQ-HBR
    workdir is gone. model.json is written last: its presence marks a complete copy. Every host
    calls this (the Orbax save is collective)."""
    target = epath.Path(workdir) / model_info.VOCABULARY_DIR
    if (target / model_info.MODEL_INFO_FILE).exists():
        return
    source = checkpointing.RunCheckpoints(vqhbr_workdir, read_only=True)
    step = source.steps()[-1]
    source.close()
    copy = checkpointing.RunCheckpoints(target, max_to_keep=1)
    if step not in copy.steps():  # a copy killed before its model.json may have saved already
        copy.save(step, vocabulary, None, {}, {"copied_from": vqhbr_workdir})
    copy.close()
    model_info.write(target, model_info.read(vqhbr_workdir))
    logging.info("[%s] vocabulary (step %d of %s) copied into %s", STAGE, step, vqhbr_workdir, target)


def cached_targets(vocabulary, source, split: str, vocabulary_dir: str, workdir, global_batch: int, mesh) -> np.ndarray:
    """Word ids [num_examples, L] of a split, computed once and stored under the workdir.

    Every host computes the ids of its own rows; the rows are gathered, so every host holds the
    whole array, and process 0 writes it once (temporary name, then rename). The file name
    carries a hash of the vocabulary checkpoint and the split, so a new vocabulary never reads
    stale targets.
    """
    steps = checkpointing.RunCheckpoints(vocabulary_dir, read_only=True)
    key = json.dumps({"tokenizer": vocabulary_dir, "step": steps.steps()[-1], "split": split, "n": len(source)})
    steps.close()
    path = epath.Path(workdir) / TARGETS_DIR / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
    if path.exists():
        with path.open("rb") as f:
            return np.load(f)
    targets = None
    for batch in input_pipeline.eval_batches(source, global_batch=global_batch):
        sharded = parallel.shard_batch(batch, mesh)
        ids = parallel.to_host(vqhbr.word_ids(vocabulary, *(sharded[k] for k in input_pipeline.SENTENCE_FIELDS)))
        index, rows = parallel.gather_host_rows((batch["index"], batch["mask"]))
        if targets is None:
            targets = np.zeros((len(source), ids.shape[1]), np.int32)
        targets[index[rows]] = ids[rows]
    if targets is None:
        raise errors.HeartLangError(f"[{STAGE}] the {split} split has no examples to compute targets for")
    if jax.process_index() == 0:
        with atomic_file.atomic_open(path) as f:
            np.save(f, targets)
    logging.info("[%s] cached %s targets %s at %s", STAGE, split, targets.shape, path)
    return targets


def make_train_step(mask_ratio: float):
    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model: MaskedEcgModel, optimizer: nnx.Optimizer, batch, rng):
        def loss_fn(model):
            return masked_lm_loss(model, batch, rng, mask_ratio)

        (loss, stats), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return {
            "loss": loss,
            "masked_accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0),
            "grad_norm": optax.tree.norm(grads),
        }

    return train_step


@nnx.jit(static_argnums=3)
def _eval_step(model, batch, rng, mask_ratio):
    _, stats = masked_lm_loss(model, batch, rng, mask_ratio)
    return stats


def evaluate(model, source, targets, global_batch, mesh, seed: int, mask_ratio: float) -> dict[str, float]:
    """Masked-word loss and accuracy on a split, with a fixed mask per batch for comparability.

    Sums are reduced inside jit over the global batch, so every host gets the global totals.
    """
    model.eval()
    totals = None
    eval_key = jax.random.fold_in(jax.random.key(seed), EVAL_MASK_STREAM)
    for i, batch in enumerate(input_pipeline.eval_batches(source, global_batch=global_batch)):
        batch["targets"] = targets[batch["index"]]
        out = parallel.to_host(
            _eval_step(model, parallel.shard_batch(batch, mesh), jax.random.fold_in(eval_key, i), mask_ratio)
        )
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    model.train()
    if totals is None:
        raise errors.HeartLangError(f"[{STAGE}] the evaluation split has no examples")
    count = max(float(totals["count"]), 1.0)
    return {
        "eval_loss": float(totals["ce_sum"]) / count,
        "eval_masked_accuracy": float(totals["correct"]) / count,
        "eval_majority_rate": float(np.max(totals["target_counts"])) / count,
    }


def train_and_evaluate(config: schema.PretrainStage, workdir: str | os.PathLike) -> dict[str, float]:
    config = schema.validate(config)  # a ConfigDict from a notebook is judged here; a typed one passes
    # Recorded absolute, so the run's config.json names the vocabulary wherever it is resumed from.
    if config.vqhbr_workdir:
        config = dataclasses.replace(config, vqhbr_workdir=os.fspath(checkpointing.absolute(config.vqhbr_workdir)))
    if not config.vqhbr_workdir:
        raise errors.CheckpointError("config.vqhbr_workdir is empty: set it to the workdir of a finished vqhbr run")
    model_info.read(config.vqhbr_workdir)  # a missing vocabulary fails before the workdir is claimed
    ctx = common.prepare(STAGE, config, workdir, IDENTITY_FIELDS)
    vocabulary = vocabulary_matching_data(config, ctx.dataset.sentence["token_len"])
    parallel.replicate_module(vocabulary, ctx.mesh)
    carry_vocabulary(vocabulary, config.vqhbr_workdir, ctx.workdir)
    train_source = common.train_source(ctx, config.train_splits)
    splits = {"+".join(config.train_splits): train_source, "validation": ctx.sources["validation"]}
    targets = {
        split: cached_targets(vocabulary, source, split, config.vqhbr_workdir, ctx.workdir, ctx.global_batch, ctx.mesh)
        for split, source in splits.items()
    }
    train_targets, validation_targets = targets.values()
    vocab_size = vocabulary.config.num_codes
    model = build_model(config, vocab_size, ctx.dataset.sentence)
    common.write_model_info(ctx, STAGE, model)
    ratio = config.model.mask_ratio

    def prepare(batch):
        batch["targets"] = train_targets[batch["index"]]
        return common.trim_to_bucket(batch)

    result = common.train(
        ctx,
        model=model,
        optimizer_config=config.optimizer,
        train_step=make_train_step(ratio),
        train_data=common.unsupervised_train_data(ctx, train_source),
        num_train_examples=len(train_source),
        prepare_batch=prepare,
        evaluate=lambda step: evaluate(
            model, ctx.sources["validation"], validation_targets, ctx.global_batch, ctx.mesh, config.seed, ratio
        ),
    )
    return result.last_eval
