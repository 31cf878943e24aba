"""Masked pre-training: what the loss counts, where targets come from, and that a tiny run learns."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import synthetic

from heartlang_jax.configs import pretrain_base, schema
from heartlang_jax.data import bundled_sample_dir
from heartlang_jax.models import masked_lm_loss, sample_mask
from heartlang_jax.stages import pretrain, vqhbr
from heartlang_jax.training import checkpointing, parallel


def _batch(vocab: int = 32):
    examples = synthetic.sentences(4, seed=2)
    batch = {k: np.stack([e[k] for e in examples]) for k in ("words", "lead_ids", "time_ids")}
    batch = {
        "words": batch["words"].astype(np.float32),
        "lead_ids": batch["lead_ids"].astype(np.int32),
        "time_ids": batch["time_ids"].astype(np.int32),
    }
    batch["targets"] = np.random.default_rng(0).integers(0, vocab, batch["lead_ids"].shape).astype(np.int32)
    return batch


def test_loss_counts_masked_real_words_only():
    config = pretrain_base.get_config("tiny")
    config.dtype = "float32"
    model = pretrain.build_model(schema.validate(config), vocab_size=32)
    model.eval()
    batch = _batch()
    rng = jax.random.key(5)
    mask = np.asarray(sample_mask(rng, jnp.asarray(batch["lead_ids"]), 0.5))
    loss = float(masked_lm_loss(model, batch, rng, 0.5)[0])

    changed = dict(batch, targets=np.where(mask, batch["targets"], (batch["targets"] + 7) % 32))
    assert float(masked_lm_loss(model, changed, rng, 0.5)[0]) == pytest.approx(loss, rel=1e-6)

    first_masked = tuple(np.argwhere(mask)[0])
    changed = dict(batch, targets=batch["targets"].copy())
    changed["targets"][first_masked] = (changed["targets"][first_masked] + 1) % 32
    assert float(masked_lm_loss(model, changed, rng, 0.5)[0]) != pytest.approx(loss, rel=1e-6)

    # Each sentence contributes round(n / 2) masked words, never padding.
    _, stats = masked_lm_loss(model, batch, rng, 0.5)
    real = (batch["lead_ids"] != 0).sum(axis=1)
    assert float(stats["count"]) == float(np.round(real / 2).sum())
    assert not mask[batch["lead_ids"] == 0].any()


def test_cached_targets_equal_the_tokenizers_word_ids(tmp_path):
    from heartlang_jax.configs import vqhbr as vqhbr_config

    config = vqhbr_config.get_config("tiny")
    config.dtype = "float32"
    tokenizer = vqhbr.build_model(schema.validate(config))
    tokenizer.eval()
    tokenizer_dir = tmp_path / "vqhbr"
    store = checkpointing.RunCheckpoints(tokenizer_dir)
    store.save(1, tokenizer, None, {}, {})
    store.close()
    source = synthetic.sentences(10, seed=3)
    mesh = parallel.make_mesh()
    cached = pretrain.cached_targets(tokenizer, source, "train", str(tokenizer_dir), str(tmp_path / "run"), 4, mesh)
    assert cached.shape == (10, 256)
    for i, example in enumerate(source):
        ids = tokenizer.word_ids(
            jnp.asarray(example["words"][None], jnp.float32),
            jnp.asarray(example["lead_ids"][None], jnp.int32),
            jnp.asarray(example["time_ids"][None], jnp.int32),
        )
        real = example["lead_ids"] != 0
        np.testing.assert_array_equal(cached[i][real], np.asarray(ids)[0][real])
    # Computed once: the second call reads the cache file.
    again = pretrain.cached_targets(tokenizer, source, "train", str(tokenizer_dir), str(tmp_path / "run"), 4, mesh)
    np.testing.assert_array_equal(again, cached)
    assert len(list((tmp_path / "run" / pretrain.TARGETS_DIR).glob("*.npy"))) == 1


def test_missing_tokenizer_fails_before_compute(tmp_path):
    config = pretrain_base.get_config("tiny")
    config.vqhbr_workdir = str(tmp_path / "nothing")
    with pytest.raises(checkpointing.CheckpointError, match="nothing"):
        pretrain.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tiny_pretraining_learns(tmp_path, bundled_tfds_dir, tiny_vqhbr_workdir):
    config = pretrain_base.get_config("tiny")
    config.data.tfds_dir = str(bundled_tfds_dir)
    config.vqhbr_workdir = str(tiny_vqhbr_workdir)
    config.num_train_steps = 80
    config.warmup_epochs = 1
    config.eval_every_steps = 10
    config.dtype = "float32"
    pretrain.train_and_evaluate(config, tmp_path)
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    first, last = evals[0], evals[-1]
    assert last["step"] == 80
    assert last["eval_loss"] < first["eval_loss"] - 0.2
    assert last["eval_masked_accuracy"] > first["eval_masked_accuracy"]
    assert last["eval_masked_accuracy"] > 1.5 * last["eval_majority_rate"]


def test_pretraining_run_folder_carries_its_vocabulary(tmp_path, bundled_tfds_dir, tiny_vqhbr_workdir):
    import shutil

    import heartlang_jax
    from heartlang_jax.inference import model_info

    record = bundled_sample_dir() / "records100" / "00000" / "00001_lr"
    shutil.copytree(tiny_vqhbr_workdir, tmp_path / "vqhbr")  # the session's fixture must survive
    config = pretrain_base.get_config("tiny")
    config.data.tfds_dir = str(bundled_tfds_dir)
    config.vqhbr_workdir = str(tmp_path / "vqhbr")
    config.num_train_steps = 2
    config.eval_every_steps = 2
    config.dtype = "float32"
    pretrain.train_and_evaluate(config, tmp_path / "made" / "pretrain")
    assert (tmp_path / "made" / "pretrain" / model_info.VOCABULARY_DIR / model_info.MODEL_INFO_FILE).is_file()
    expected = heartlang_jax.load(tmp_path / "vqhbr").word_ids(record)
    np.testing.assert_array_equal(heartlang_jax.load(tmp_path / "made" / "pretrain").word_ids(record), expected)

    shutil.copytree(tmp_path / "made" / "pretrain", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "made")
    shutil.rmtree(tmp_path / "vqhbr")
    moved = heartlang_jax.load(tmp_path / "elsewhere")
    assert moved.kind == "pretrain" and moved.num_codes == moved.info.model["vocab_size"]
    np.testing.assert_array_equal(moved.word_ids(record), expected)
