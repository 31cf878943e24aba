"""Length buckets (heartlang_jax/packing.py): a batch cut to its bucket gives the losses and
gradients of the same sentences at full length, and the bucketed stream keeps each window's
sentences while grouping similar lengths."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import synthetic
from flax import nnx

from heartlang_jax.data import input_pipeline, packing
from heartlang_jax.models import VQHBR, ECGFormerConfig, MaskedEcgModel, VQHBRConfig, masked_lm_loss, vqhbr_loss

T = 10
L = 32
ENC = ECGFormerConfig(num_layers=2, hidden_dim=16, mlp_dim=24, num_heads=2, head_dim=6, token_len=T, max_len=L)


def _batch(num_real=(5, 9, 14), vocab=12, seed=0):
    rng = np.random.default_rng(seed)
    real = np.arange(L)[None, :] < np.array(num_real)[:, None]
    return {
        "words": (rng.normal(size=(len(num_real), L, T)) * real[..., None]).astype(np.float32),
        "lead_ids": np.where(real, rng.integers(1, 13, real.shape), 0).astype(np.int32),
        "time_ids": np.where(real, rng.integers(1, 11, real.shape), 0).astype(np.int32),
        "targets": rng.integers(0, vocab, real.shape).astype(np.int32),
    }


def test_bucket_length_keeps_a_padding_word_after_the_longest_sentence():
    assert packing.bucket_length(14, 16, 256) == 16
    assert packing.bucket_length(16, 16, 256) == 32  # 16 real words need a 17th for the conv's wrap
    assert packing.bucket_length(250, 16, 256) == 256
    assert packing.bucket_length(256, 16, 256) == 256
    assert packing.bucket_length(100, 0, 256) == 256  # off


def test_pretraining_loss_and_gradients_are_those_of_the_full_length_batch():
    batch = _batch()
    full_model = MaskedEcgModel(ENC, 12, rngs=nnx.Rngs(0))
    full_model.eval()
    cut_model = nnx.clone(full_model)
    rng = jax.random.key(3)

    @nnx.jit  # compiled (once per length): op by op it took 15 s
    def value_and_grads(model, batch):
        return nnx.value_and_grad(lambda m: masked_lm_loss(m, batch, rng, 0.5), has_aux=True)(model)

    def loss_and_grads(model, batch):
        (loss, stats), grads = value_and_grads(model, batch)
        return float(loss), stats, jax.tree.leaves(nnx.to_pure_dict(grads))

    cut = packing.trim(batch, packing.bucket_length(14, 8, L))
    assert cut["words"].shape[1] == 16
    loss, stats, grads = loss_and_grads(full_model, batch)
    loss_cut, stats_cut, grads_cut = loss_and_grads(cut_model, cut)
    assert loss_cut == pytest.approx(loss, rel=1e-5)
    assert float(stats_cut["count"]) == float(stats["count"]) == np.round(0.5 * np.array([5, 9, 14])).sum()
    assert float(stats_cut["correct"]) == float(stats["correct"])
    np.testing.assert_array_equal(np.asarray(stats_cut["target_counts"]), np.asarray(stats["target_counts"]))
    for a, b in zip(grads, grads_cut):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_vqhbr_loss_and_gradients_are_those_of_the_full_length_batch():
    config = VQHBRConfig(encoder=ENC, decoder=dataclasses.replace(ENC, token_len=4), num_codes=12, code_dim=4)
    model = VQHBR(config, rngs=nnx.Rngs(0))
    batch = _batch()
    # Initialise the codebook once at full length, then compare without updating it.
    model(batch["words"], batch["lead_ids"], batch["time_ids"], update_codebook=True)
    model.eval()
    twin = nnx.clone(model)

    @nnx.jit  # compiled (once per length): op by op it took 17 s
    def value_and_grads(model, batch):
        def loss(model):
            out = model(batch["words"], batch["lead_ids"], batch["time_ids"], update_codebook=False)
            return vqhbr_loss(out, jnp.asarray(batch["words"]), jnp.asarray(batch["lead_ids"]))[0]

        return nnx.value_and_grad(loss)(model)

    def loss_and_grads(model, batch):
        value, grads = value_and_grads(model, batch)
        return float(value), jax.tree.leaves(nnx.to_pure_dict(grads))

    loss, grads = loss_and_grads(model, batch)
    loss_cut, grads_cut = loss_and_grads(twin, packing.trim(batch, 16))
    assert loss_cut == pytest.approx(loss, rel=1e-5)
    for a, b in zip(grads, grads_cut):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_grouped_order_keeps_each_window_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=50)
    order = packing.LengthGroupedOrder(np.arange(50), lengths, seed=1, global_batch=10, window=5, step=16, max_len=256)
    items = np.stack([order[i] for i in range(50)])
    assert sorted(items[:, 0]) == list(range(50))  # one window = one epoch here: each sentence once
    for b in range(5):
        rows = items[b * 10 : (b + 1) * 10]
        assert len(set(rows[:, 1])) == 1 and rows[0, 1] > lengths[rows[:, 0]].max()
    # Sorted windows: far less padding than random batches of the same sentences.
    computed = sum(items[b * 10, 1] * 10 for b in range(5))
    shuffled = np.random.default_rng(1).permutation(50).reshape(5, 10)
    unsorted = sum(packing.bucket_length(int(lengths[rows].max()), 16, 256) * 10 for rows in shuffled)
    assert lengths.sum() / computed > 0.75 > lengths.sum() / unsorted
    again = packing.LengthGroupedOrder(np.arange(50), lengths, seed=1, global_batch=10, window=5, step=16, max_len=256)
    np.testing.assert_array_equal(np.stack([again[i] for i in range(50)]), items)  # every host agrees


def test_train_dataset_yields_bucketed_rows():
    source = synthetic.sentences(24, seed=2, max_len=64, token_len=T)  # 20 to 59 real words
    lengths = packing.real_lengths(source)
    data = input_pipeline.train_dataset(
        source, global_batch=8, seed=0, rows=slice(0, 8), lengths=lengths, bucket_step=8, bucket_window=3
    )
    for batch in (data[i] for i in range(3)):
        bucket = int(batch[packing.BUCKET_KEY])
        assert bucket > lengths[batch["index"]].max()
        cut = packing.trim(batch, bucket)
        assert cut["words"].shape == (8, bucket, T) and packing.BUCKET_KEY not in cut
        assert np.all(batch["lead_ids"][:, bucket:] == 0)
