"""Stage models: masking, masked LM, VQ-HBR and the classifier head."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from heartlang_jax.models import (
    VQHBR,
    CodebookVariable,
    EcgClassifier,
    ECGFormerConfig,
    MaskedEcgModel,
    VQHBRConfig,
    masked_positions,
    sample_mask,
    vqhbr_loss,
)

T = 10
ENC = ECGFormerConfig(num_layers=1, hidden_dim=16, mlp_dim=24, num_heads=2, head_dim=6, token_len=T, max_len=12)
DEC = dataclasses.replace(ENC, token_len=4)
VQ = VQHBRConfig(encoder=ENC, decoder=DEC, num_codes=12, code_dim=4, kmeans_iters=2)


# One compiled forward per model structure, shared by the tests below.
_apply = nnx.jit(lambda model, *args: model(*args))


@pytest.fixture(scope="module")
def mlm():
    return MaskedEcgModel(ENC, vocab_size=12, rngs=nnx.Rngs(0))


def _batch(num_real=(5, 8), length=8, seed=0):
    rng = np.random.default_rng(seed)
    batch = len(num_real)
    words = rng.normal(size=(batch, length, T)).astype(np.float32)
    lead_ids = rng.integers(1, 13, size=(batch, length)).astype(np.int32)
    time_ids = rng.integers(1, 11, size=(batch, length)).astype(np.int32)
    for b, n in enumerate(num_real):
        words[b, n:], lead_ids[b, n:], time_ids[b, n:] = 0.0, 0, 0
    return words, lead_ids, time_ids


# --- sample_mask / masked_positions -------------------------------------------


def test_sample_mask_masks_half_of_real_words_only():
    num_real = np.array([0, 1, 2, 3, 5, 7, 16, 13])
    lead_ids = (np.arange(16)[None, :] < num_real[:, None]).astype(np.int32)
    masks = [np.asarray(sample_mask(jax.random.key(s), lead_ids)) for s in range(4)]
    for mask in masks:
        np.testing.assert_array_equal(mask.sum(-1), np.round(0.5 * num_real))
        assert not (mask & (lead_ids == 0)).any()
    assert any((m != masks[0]).any() for m in masks[1:])  # it is random
    jitted = jax.jit(sample_mask, static_argnames="ratio")(jax.random.key(0), lead_ids, ratio=0.25)
    np.testing.assert_array_equal(np.asarray(jitted).sum(-1), np.round(0.25 * num_real))


def test_masked_positions_lists_masked_words_in_order():
    mask = np.array([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], bool)
    positions, valid = masked_positions(jnp.asarray(mask), 3)
    np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(positions)[0], [1, 3, 4])
    assert np.asarray(positions)[1, 0] == 0


# --- MaskedEcgModel -----------------------------------------------------------


def test_masked_word_content_does_not_reach_the_encoder(mlm):
    words, lead_ids, time_ids = _batch()
    mask = np.zeros(lead_ids.shape, bool)
    mask[:, 2:5] = True  # word 3 and both conv neighbours are masked
    base = np.asarray(_apply(mlm, words, lead_ids, time_ids, mask))
    changed = words.copy()
    changed[:, 3] += 5.0
    np.testing.assert_allclose(np.asarray(_apply(mlm, changed, lead_ids, time_ids, mask)), base, atol=1e-6)
    unmasked = words.copy()
    unmasked[:, 0] += 5.0  # control: an unmasked word does change the output
    assert np.abs(np.asarray(_apply(mlm, unmasked, lead_ids, time_ids, mask)) - base).max() > 1e-3


def test_lead_and_time_embeddings_are_added_after_masking(mlm):
    words, lead_ids, time_ids = _batch(num_real=(8, 8))
    mask = np.ones(lead_ids.shape, bool)  # every word is the mask token
    base = np.asarray(_apply(mlm, words, lead_ids, time_ids, mask))
    np.testing.assert_allclose(  # word values are gone entirely ...
        np.asarray(_apply(mlm, words * 0 + 3.0, lead_ids, time_ids, mask)), base, atol=1e-6
    )
    other_leads = lead_ids % 12 + 1  # ... but lead ids still matter
    assert np.abs(np.asarray(_apply(mlm, words, other_leads, time_ids, mask)) - base).max() > 1e-3
    other_times = time_ids % 10 + 1
    assert np.abs(np.asarray(_apply(mlm, words, lead_ids, other_times, mask)) - base).max() > 1e-3


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_logits_at_masked_positions(position):
    model = MaskedEcgModel(dataclasses.replace(ENC, position=position), vocab_size=12, rngs=nnx.Rngs(0))
    words, lead_ids, time_ids = _batch()
    mask = sample_mask(jax.random.key(0), lead_ids)
    hidden = model(words, lead_ids, time_ids, mask)
    assert hidden.shape == (2, 8, ENC.hidden_dim)  # CLS stripped
    positions, valid = masked_positions(mask, 4)
    logits = np.asarray(model.logits_at(hidden, positions))
    assert logits.shape == (2, 4, 12) and logits.dtype == np.float32
    h = np.asarray(hidden, np.float64)
    kernel = np.asarray(model.lm_head.kernel[...], np.float64)
    bias = np.asarray(model.lm_head.bias[...], np.float64)
    for b in range(2):
        for m in range(4):
            want = h[b, int(positions[b, m])] @ kernel + bias
            np.testing.assert_allclose(logits[b, m], want, atol=1e-5)
    assert int(np.asarray(valid).sum()) == int(np.asarray(mask).sum())


# --- VQHBR -----------------------------------------------------------------------


def test_vqhbr_forward_shapes_padding_and_tokenize():
    model = VQHBR(VQ, rngs=nnx.Rngs(0))
    model.eval()
    words, lead_ids, time_ids = _batch()
    z = np.asarray(model.encode(words, lead_ids, time_ids))
    assert z.shape == (2, 8, 4)
    assert (z[lead_ids == 0] == 0).all() and (np.abs(z[lead_ids != 0]) > 0).any()
    codebook = np.asarray(model.quantizer.codebook[...])
    out = model(words, lead_ids, time_ids, update_codebook=False)
    assert out.reconstruction.shape == (2, 8, T)
    assert out.reconstruction.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.indices)[lead_ids == 0], 0)
    tokens = np.asarray(model.word_ids(words, lead_ids, time_ids))
    np.testing.assert_array_equal(tokens, np.asarray(out.indices))
    np.testing.assert_array_equal(np.asarray(model.quantizer.codebook[...]), codebook)


def test_vqhbr_loss_is_masked_mse_plus_vq_terms():
    # CLS encoder: its output must be stripped before the task head.
    config = dataclasses.replace(VQ, encoder=dataclasses.replace(ENC, position="learned"))
    model = VQHBR(config, rngs=nnx.Rngs(0))
    words, lead_ids, time_ids = _batch()
    out = model(words, lead_ids, time_ids, update_codebook=False)
    loss, metrics = vqhbr_loss(out, words, lead_ids)
    rec = np.asarray(out.reconstruction, np.float64)
    real = lead_ids != 0
    want_rec = ((rec - words) ** 2)[real].mean()
    assert float(metrics["rec_loss"]) == pytest.approx(want_rec, rel=1e-5)
    q = out.quantizer
    assert float(loss) == pytest.approx(want_rec + float(q.codebook_loss) + float(q.commitment_loss), rel=1e-5)


def test_commitment_weighting_mean_is_released_sum_is_paper():
    """ "mean" (default) = released F.mse_loss over the code dimension; "sum" = d times that."""
    assert VQ.commitment_weighting == "mean"
    words, lead_ids, time_ids = _batch()
    losses = {}
    for weighting in ("mean", "sum"):
        model = VQHBR(dataclasses.replace(VQ, commitment_weighting=weighting), rngs=nnx.Rngs(0))
        out = model(words, lead_ids, time_ids, update_codebook=False)
        z = np.asarray(model.encode(words, lead_ids, time_ids), np.float64)[lead_ids != 0]
        zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
        codes = np.asarray(model.quantizer.codebook[...], np.float64)[np.asarray(out.indices)[lead_ids != 0]]
        losses[weighting] = float(out.quantizer.commitment_loss)
        reduce = np.mean if weighting == "mean" else np.sum
        assert losses[weighting] == pytest.approx(reduce((zn - codes) ** 2, axis=-1).mean(), rel=1e-5)
    assert losses["sum"] == pytest.approx(VQ.code_dim * losses["mean"], rel=1e-5)
    with pytest.raises(ValueError, match="commitment_weighting"):
        dataclasses.replace(VQ, commitment_weighting="max")


def test_layer_decay_scales_stacked_blocks():
    """Block i gets decay^(L - i) through a [L, 1, ...] scale that broadcasts on its stack."""
    from heartlang_jax.training import optim

    config = dataclasses.replace(ENC, num_layers=3)
    model = EcgClassifier(config, num_classes=3, rngs=nnx.Rngs(0))
    scales = nnx.to_pure_dict(optim.layer_decay_scales(model, 0.5))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.structure(scales) == jax.tree.structure(params)
    for scale, param in zip(jax.tree.leaves(scales["encoder"]["blocks"]), jax.tree.leaves(params["encoder"]["blocks"])):
        assert scale.shape == (3,) + (1,) * (param.ndim - 1)
        np.testing.assert_allclose(np.asarray(scale).ravel(), [0.5**3, 0.5**2, 0.5])
    assert scales["head"]["kernel"] == scales["encoder"]["final_norm"]["scale"] == 1.0
    assert scales["encoder"]["token_embed"]["kernel"] == pytest.approx(0.5**4)
    # Through the optimizer: block i's update is scaled by its own factor.
    opt = optax.chain(optim.scale_by_tree(optim.layer_decay_scales(model, 0.5)))
    ones = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    updates, _ = opt.update(ones, opt.init(ones))
    kernel = np.asarray(updates["encoder"]["blocks"]["attn"]["qkv"]["kernel"][...])
    np.testing.assert_allclose(kernel[:, 0, 0], [0.125, 0.25, 0.5])


def test_vqhbr_train_step_updates_params_by_grad_and_codebook_by_ema():
    # CLS decoder: its output must be stripped before the reconstruction head.
    config = dataclasses.replace(VQ, decoder=dataclasses.replace(DEC, position="learned"))
    model = VQHBR(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, words, lead_ids, time_ids):
        def loss_fn(model):
            out = model(words, lead_ids, time_ids, update_codebook=True)
            return vqhbr_loss(out, words, lead_ids)

        (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return metrics, grads

    params_before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    codebook_before = np.asarray(model.quantizer.codebook[...])
    metrics, grads = train_step(model, optimizer, *_batch())
    assert bool(model.quantizer.initialized[...])
    assert np.abs(np.asarray(model.quantizer.codebook[...]) - codebook_before).max() > 1e-3
    assert not jax.tree.leaves(nnx.state(grads, CodebookVariable))
    enc_kernel = np.asarray(model.encoder.blocks.attn.qkv.kernel[...])[0]
    assert np.abs(enc_kernel - params_before["encoder"]["blocks"]["attn"]["qkv"]["kernel"][0]).max() > 0
    assert np.isfinite(float(metrics["loss"]))
    assert 1 <= int(metrics["num_used"]) <= VQ.num_codes


def test_vqhbr_config_checks_decoder_width():
    with pytest.raises(ValueError, match="token_len"):
        VQHBRConfig(encoder=ENC, decoder=ENC, code_dim=4)


# --- EcgClassifier ---------------------------------------------------------------


def test_classifier_mean_pool_ignores_padding():
    model = EcgClassifier(ENC, num_classes=3, rngs=nnx.Rngs(0))
    words, lead_ids, time_ids = _batch(num_real=(5, 7))
    feats = np.asarray(model.features(words, lead_ids, time_ids))
    hidden = np.asarray(model.encoder(words, lead_ids, time_ids), np.float64)
    for b, n in enumerate((5, 7)):
        np.testing.assert_allclose(feats[b], hidden[b, :n].mean(0), atol=1e-5)
    padded = [np.pad(a, [(0, 0), (0, 4)] + [(0, 0)] * (a.ndim - 2)) for a in (words, lead_ids, time_ids)]
    logits = np.asarray(model(words, lead_ids, time_ids))
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(model(*padded)), logits, atol=1e-5)


def test_classifier_uses_cls_in_learned_mode():
    model = EcgClassifier(dataclasses.replace(ENC, position="learned"), num_classes=3, rngs=nnx.Rngs(0))
    batch = _batch()
    hidden = np.asarray(model.encoder(*batch))
    np.testing.assert_allclose(np.asarray(model.features(*batch)), hidden[:, 0], atol=1e-6)


def test_pretrained_encoder_transfers_by_name():
    pretrained = MaskedEcgModel(ENC, vocab_size=12, rngs=nnx.Rngs(1))
    model = EcgClassifier(ENC, num_classes=3, rngs=nnx.Rngs(2))
    batch = _batch()
    assert np.abs(np.asarray(model.encoder(*batch)) - np.asarray(pretrained.encoder(*batch))).max() > 1e-3
    nnx.update(model.encoder, nnx.state(pretrained.encoder))
    np.testing.assert_allclose(np.asarray(model.encoder(*batch)), np.asarray(pretrained.encoder(*batch)), atol=1e-6)
