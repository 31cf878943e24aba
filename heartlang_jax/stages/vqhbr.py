"""VQ-HBR: learn the ECG vocabulary by reconstructing heartbeats through an EMA codebook.

Its run folder is the vocabulary that masked pre-training reads its targets from:
`restore_vocabulary(workdir)` rebuilds the model from the folder's `model.json` and restores it,
and `word_ids` maps sentences to vocabulary indices. Each evaluation also draws one validation
sentence's reconstructions into TensorBoard (Images tab, `eval/reconstruction`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from heartlang_jax import errors, stages
from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.inference import model_info
from heartlang_jax.models import VQHBR, VQHBRConfig, vqhbr_loss
from heartlang_jax.stages import common
from heartlang_jax.training import parallel, train_loop

STAGE = stages.name_of(schema.VQHBRStage)
# Fields that must match for a workdir's checkpoints to be resumed by this config.
IDENTITY_FIELDS = ("stage", "model", "data.dataset", "data.builder_config", "data.mixture", "train_splits")


def model_config(config: schema.VQHBRStage, sentence: Mapping | None = None) -> VQHBRConfig:
    """The config's model completed for the data: `sentence` is the dataset's sentence spec
    (max_len, token_len; None = the 256 x 96 default), the dtype the config's compute dtype."""
    dtype = common.compute_dtype(config)
    model = config.model
    return dataclasses.replace(
        model,
        encoder=common.ecgformer_config(model.encoder, dtype, sentence),
        decoder=common.ecgformer_config(model.decoder, dtype, sentence, token_len=model.code_dim),
    )


def build_model(config: schema.VQHBRStage, seed: int | None = None, sentence: Mapping | None = None) -> VQHBR:
    return VQHBR(model_config(config, sentence), rngs=nnx.Rngs(config.seed if seed is None else seed))


def _real(batch) -> jax.Array:
    return batch["lead_ids"] != 0  # [B, L]


def reconstruction_sse(reconstruction: jax.Array, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sum of squared errors over real words, the same for predicting zeros, and the sample count."""
    real = (_real(batch) & batch["mask"][:, None])[..., None].astype(jnp.float32)  # [B, L, 1]
    words = batch["words"].astype(jnp.float32)
    sse = jnp.sum(jnp.square(reconstruction.astype(jnp.float32) - words) * real)
    zero_sse = jnp.sum(jnp.square(words) * real)
    return sse, zero_sse, jnp.sum(real) * words.shape[-1]


@nnx.jit(donate_argnums=(0, 1))
def train_step(model: VQHBR, optimizer: nnx.Optimizer, batch, rng):
    """MSE over real words + codebook + commitment terms (SPEC §4); EMA-updates the codebook."""
    del rng  # dropout draws from the model's own Rngs

    def loss_fn(model):
        out = model(batch["words"], batch["lead_ids"], batch["time_ids"], update_codebook=True)
        loss, metrics = vqhbr_loss(out, batch["words"], batch["lead_ids"])
        return loss, (metrics, out.quantizer.counts)

    grads, (metrics, counts) = nnx.grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {**metrics, "grad_norm": optax.tree.norm(grads), "code_counts": counts}


def reduce_train_metrics(fetched: list[dict]) -> dict[str, float]:
    """Means of the scalars, plus codebook health over the whole log interval.

    Dead words are the codes no training word chose since the last log; the EMA cluster sizes
    cannot show this in a short run (a code unused for 300 steps still keeps 0.99^300 of its count).
    """
    counts = np.sum([m["code_counts"] for m in fetched], axis=0).astype(np.float64)
    scalars = train_loop.mean_metrics([{k: v for k, v in m.items() if k != "code_counts"} for m in fetched])
    return {**scalars, **codebook_usage(counts)}


def codebook_usage(counts: np.ndarray) -> dict[str, float]:
    """Usage perplexity, dead words and used fraction from per-code assignment counts."""
    p = counts / max(counts.sum(), 1.0)
    nonzero = p[p > 0]
    return {
        "usage_perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "dead_words": int(np.sum(counts == 0)),
        "used_fraction": float(np.mean(counts > 0)),
    }


@nnx.jit
def eval_step(model: VQHBR, batch):
    """Sums over the batch, and the first sentence's words and reconstruction (for a figure)."""
    out = model(batch["words"], batch["lead_ids"], batch["time_ids"], update_codebook=False)
    sse, zero_sse, count = reconstruction_sse(out.reconstruction, batch)
    real = _real(batch) & batch["mask"][:, None]
    counts = jnp.zeros(model.quantizer.num_codes, jnp.int32).at[out.indices].add(real.astype(jnp.int32))
    first = {
        "words": batch["words"][0],  # [L, T]
        "reconstruction": out.reconstruction[0].astype(jnp.float32),  # [L, T]
        "lead_ids": batch["lead_ids"][0],  # [L]
        "word_ids": out.indices[0],  # [L]
    }
    return {"sse": sse, "zero_sse": zero_sse, "count": count, "code_counts": counts}, first


def evaluate(model: VQHBR, source, global_batch: int, mesh, example: dict | None = None) -> dict[str, float]:
    """Reconstruction MSE on a split, its ratio to predicting zeros, and codebook usage.

    The sums are reduced inside jit over the global batch, so every host gets the global totals.
    `example`, if given, receives the split's first sentence: its words, reconstruction, lead ids
    and word ids.
    """
    model.eval()
    totals = None
    for i, batch in enumerate(input_pipeline.eval_batches(source, global_batch=global_batch)):
        out, first = parallel.to_host(eval_step(model, parallel.shard_batch(batch, mesh)))
        if i == 0 and example is not None:
            example.update(first)
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    model.train()
    if totals is None:
        raise errors.HeartLangError(f"[{STAGE}] the evaluation split has no examples")
    mse = float(totals["sse"] / max(totals["count"], 1))
    zero_mse = float(totals["zero_sse"] / max(totals["count"], 1))
    usage = codebook_usage(totals["code_counts"].astype(np.float64))
    return {
        "eval_mse": mse,
        "eval_zero_mse": zero_mse,
        "eval_mse_ratio": mse / max(zero_mse, 1e-12),
        **{f"eval_{k}": v for k, v in usage.items()},
    }


def train_and_evaluate(config: schema.VQHBRStage, workdir: str | os.PathLike) -> dict[str, float]:
    config = schema.validate(config)  # a ConfigDict from a notebook is judged here; a typed one passes
    ctx = common.prepare(STAGE, config, workdir, IDENTITY_FIELDS)
    model = build_model(config, sentence=ctx.dataset.sentence)
    common.write_model_info(ctx, STAGE, model)
    source = common.train_source(ctx, config.train_splits)
    example: dict = {}
    result = common.train(
        ctx,
        model=model,
        optimizer_config=config.optimizer,
        train_step=train_step,
        train_data=common.unsupervised_train_data(ctx, source),
        num_train_examples=len(source),
        prepare_batch=common.trim_to_bucket,
        evaluate=lambda step: evaluate(model, ctx.sources["validation"], ctx.global_batch, ctx.mesh, example),
        eval_images=lambda step: reconstruction_images(example),
        reduce_metrics=reduce_train_metrics,
    )
    return result.last_eval


def reconstruction_images(example: dict) -> dict[str, np.ndarray]:
    """{"eval/reconstruction": RGB image} of one validation sentence's words under their
    reconstructions (12 words, 80 dpi: a fraction of a second per evaluation). Only process 0
    draws, as only it writes; without matplotlib (the `[viz]` extra) nothing is drawn."""
    if not example or jax.process_index() != 0:
        return {}
    try:
        from heartlang_jax.evaluation import plots

        image = plots.reconstruction_figure_image(
            example["words"], example["reconstruction"], lead_ids=example["lead_ids"], word_ids=example["word_ids"]
        )
    except ImportError as e:
        _warn_once(f"[{STAGE}] no reconstruction figures in TensorBoard: {e} (pip install 'heartlang-jax[viz]')")
        return {}
    return {"eval/reconstruction": image}


@functools.cache
def _warn_once(message: str) -> None:
    logging.warning("%s", message)


@functools.lru_cache(maxsize=4)
def restore_vocabulary(workdir: str) -> VQHBR:
    """The trained VQ-HBR model of a run folder, rebuilt from its own model.json."""
    _, model, _ = model_info.load_model(workdir, expect_kind=STAGE, dtype="float32")
    model.eval()
    return model


@nnx.jit
def word_ids(model: VQHBR, words, lead_ids, time_ids) -> jax.Array:
    """Vocabulary index of every word [B, L] (computed with the lead and time ids)."""
    return model.word_ids(words, lead_ids, time_ids)
