"""Masked ECG-sentence pre-training (paper §2.4): predict the vocabulary index of masked words.

The targets come from the frozen VQ-HBR tokenizer, computed with the lead and time ids (the
released code omits them, a bug). They do not depend on the mask, so they are computed once per
sentence and cached in the workdir as an array indexed by example, not at every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from heartlang_jax import optim
from heartlang_jax import parallel
from heartlang_jax import train_loop
from heartlang_jax.models import MaskedEcgModel, masked_lm_loss
from heartlang_jax.stages import common
from heartlang_jax.stages import vqhbr

STAGE = "pretrain"
IDENTITY_FIELDS = ("stage", "model", "data.builder_config", "vqhbr_workdir")
TARGETS_DIR = "targets"


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> MaskedEcgModel:
    encoder = common.ecgformer_config(config.model.encoder, common.compute_dtype(config))
    return MaskedEcgModel(encoder, vocab_size, rngs=nnx.Rngs(config.seed))


def load_vocabulary(config: ml_collections.ConfigDict):
    """The frozen VQ-HBR model named by the config, checked before any compute."""
    if not config.vqhbr_workdir:
        raise checkpointing.CheckpointError(
            "config.vqhbr_workdir is empty: set it to the workdir of a finished vqhbr run"
        )
    tokenizer = vqhbr.load_vocabulary(os.path.abspath(config.vqhbr_workdir))
    token_len = tokenizer.config.encoder.token_len
    if token_len != 96:
        raise checkpointing.CheckpointError(
            f"tokenizer in {config.vqhbr_workdir} reads words of {token_len} samples, the data has 96"
        )
    return tokenizer


def cached_targets(tokenizer, source, split: str, tokenizer_dir: str, workdir: str, batch_size: int, mesh) -> np.ndarray:
    """Word ids [num_examples, L] of a split, computed once and stored under the workdir.

    The file name carries a hash of the tokenizer checkpoint and the split, so a new tokenizer
    never reads stale targets. Written to a temporary name and renamed: never half-written.
    """
    steps = checkpointing.RunCheckpoints(tokenizer_dir, read_only=True)
    key = json.dumps({"tokenizer": tokenizer_dir, "step": steps.steps()[-1], "split": split, "n": len(source)})
    steps.close()
    path = pathlib.Path(workdir) / TARGETS_DIR / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
    if path.is_file():
        return np.load(path)
    targets = None
    for batch in input_pipeline.eval_batches(source, batch_size=batch_size):
        ids = np.asarray(
            jax.device_get(
                vqhbr.word_ids(tokenizer, *(parallel.shard_batch(batch, mesh)[k] for k in input_pipeline.SENTENCE_FIELDS))
            )
        )
        if targets is None:
            targets = np.zeros((len(source), ids.shape[1]), np.int32)
        rows = batch["mask"]
        targets[batch["index"][rows]] = ids[rows]
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, targets)
        os.replace(tmp, path)
    logging.info("[%s] cached %s targets %s at %s", STAGE, split, targets.shape, path)
    return targets


def make_train_step(mask_ratio: float):
    @nnx.jit
    def train_step(model: MaskedEcgModel, optimizer: nnx.Optimizer, batch, rng):
        def loss_fn(model):
            return masked_lm_loss(model, batch, rng, mask_ratio)

        (loss, stats), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return {
            "loss": loss,
            "masked_accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0),
            "grad_norm": optax.global_norm(grads),
        }

    return train_step


@nnx.jit(static_argnums=3)
def _eval_step(model, batch, rng, mask_ratio):
    _, stats = masked_lm_loss(model, batch, rng, mask_ratio)
    return stats


def evaluate(model, source, targets, batch_size, mesh, seed: int, mask_ratio: float) -> dict[str, float]:
    """Masked-word loss and accuracy on a split, with a fixed mask per batch for comparability."""
    model.eval()
    totals = None
    for i, batch in enumerate(input_pipeline.eval_batches(source, batch_size=batch_size)):
        batch["targets"] = targets[batch["index"]]
        rng = jax.random.fold_in(jax.random.key(seed + 1), i)
        out = jax.device_get(_eval_step(model, parallel.shard_batch(batch, mesh), rng, mask_ratio))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    model.train()
    count = max(float(totals["count"]), 1.0)
    return {
        "eval_loss": float(totals["ce_sum"]) / count,
        "eval_masked_accuracy": float(totals["correct"]) / count,
        "eval_majority_rate": float(np.max(totals["target_counts"])) / count,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    workdir = os.fspath(workdir)
    tokenizer = load_vocabulary(config)  # fails before any compute if missing or incompatible
    tokenizer_dir = os.path.abspath(config.vqhbr_workdir)
    # Recorded absolute, so fine-tuning started from another directory finds the vocabulary.
    config = ml_collections.ConfigDict(config.to_dict())
    config.vqhbr_workdir = tokenizer_dir
    checkpointing.claim_workdir(workdir, config, IDENTITY_FIELDS)
    _, sources = common.open_dataset(config, workdir)
    mesh = parallel.make_mesh()
    parallel.replicate_module(tokenizer, mesh)
    batch_size = parallel.host_batch_size(config.per_device_batch_size)
    targets = {
        split: cached_targets(tokenizer, sources[split], split, tokenizer_dir, workdir, batch_size, mesh)
        for split in ("train", "validation")
    }
    vocab_size = tokenizer.config.num_codes
    train_data = input_pipeline.train_dataset(sources["train"], batch_size=batch_size, seed=config.seed)
    schedule = train_loop.Schedule.from_config(
        config, len(sources["train"]), parallel.global_batch_size(config.per_device_batch_size)
    )
    model = build_model(config, vocab_size)
    common.log_parameter_count(STAGE, model)
    tx = optim.make_optimizer(
        config.optimizer, num_train_steps=schedule.num_train_steps, warmup_steps=schedule.warmup_steps
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ratio = config.model.mask_ratio

    def prepare(batch):
        batch["targets"] = targets["train"][batch["index"]]
        return batch

    result = train_loop.run(
        stage=STAGE,
        config=config,
        workdir=workdir,
        model=model,
        optimizer=optimizer,
        train_step=make_train_step(ratio),
        train_data=train_data,
        mesh=mesh,
        schedule=schedule,
        prepare_batch=prepare,
        evaluate=lambda step: evaluate(
            model, sources["validation"], targets["validation"], batch_size, mesh, config.seed, ratio
        ),
    )
    logging.info("[%s] done at step %d: %s", STAGE, result.step, result.last_eval)
    return result.last_eval
