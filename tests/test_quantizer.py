"""EMA cosine quantizer against a float64 NumPy reference of SPEC §4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.models.quantizer import CodebookVariable, EmaCodebookQuantizer, l2_normalize, spherical_kmeans

K, D = 16, 8


def _np_l2(x, eps=1e-6):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _reference_step(codebook, cluster_size, z, mask, decay):
    """Assignment, losses, usage stats and one EMA step, all in float64."""
    zn = _np_l2(z.reshape(-1, z.shape[-1]).astype(np.float64))
    real = mask.reshape(-1)
    idx = np.argmax(zn @ codebook.T, axis=-1)
    codes = codebook[idx]
    counts = np.bincount(idx[real], minlength=len(codebook)).astype(np.float64)
    new = codebook.copy()
    for k in range(len(codebook)):
        chosen = real & (idx == k)
        if chosen.any():
            target = _np_l2(zn[chosen].mean(0))
            new[k] = decay * codebook[k] + (1 - decay) * target
    new = _np_l2(new)
    sq = ((zn - codes) ** 2).sum(-1)
    p = counts[counts > 0] / counts.sum()
    return {
        "indices": idx.reshape(mask.shape),
        "codebook": new,
        "cluster_size": decay * cluster_size + (1 - decay) * counts,
        "loss": sq[real].mean(),
        "perplexity": np.exp(-(p * np.log(p)).sum()),
        "num_used": int((counts > 0).sum()),
        "counts": counts,
        "quantized": codes.reshape(z.shape),
    }


def _data(seed, shape=(3, 10)):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape + (D,)).astype(np.float32)
    mask = rng.random(shape) < 0.7
    return z, mask


def _state(q):
    return (np.asarray(q.codebook[...], np.float64), np.asarray(q.cluster_size[...], np.float64))


@pytest.mark.parametrize("jit,weighting", [(False, "mean"), (True, "mean"), (False, "sum")])
def test_update_after_init_matches_reference(jit, weighting):
    q = EmaCodebookQuantizer(K, D, decay=0.9, kmeans_iters=3, loss_weighting=weighting, rngs=nnx.Rngs(0))
    call = nnx.jit(lambda q, z, m: q(z, m, update=True)) if jit else (lambda q, z, m: q(z, m, update=True))
    call(q, *_data(0))  # k-means init + first EMA step
    codebook, cluster_size = _state(q)
    z, mask = _data(1)
    want = _reference_step(codebook, cluster_size, z, mask, decay=0.9)
    out = call(q, z, mask)
    np.testing.assert_array_equal(np.asarray(out.indices), want["indices"])
    np.testing.assert_allclose(np.asarray(q.codebook[...]), want["codebook"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.cluster_size[...]), want["cluster_size"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.quantized), want["quantized"], atol=1e-5)
    # "mean" = the released F.mse_loss (an element mean), "sum" = the paper's ||.||^2 per word.
    want_loss = want["loss"] / D if weighting == "mean" else want["loss"]
    assert float(out.codebook_loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(out.commitment_loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(out.perplexity) == pytest.approx(want["perplexity"], rel=1e-5)
    assert int(out.num_used) == want["num_used"]
    np.testing.assert_array_equal(np.asarray(out.counts), want["counts"])
    # The step must have moved some codes and kept the unused ones.
    moved = np.abs(want["codebook"] - codebook).max(-1) > 1e-6
    assert moved.any() and not moved.all()


def test_no_update_leaves_state_alone():
    q = EmaCodebookQuantizer(K, D, rngs=nnx.Rngs(0))
    before = _state(q)
    z, mask = _data(0)
    out = q(z, mask, update=False)
    after = _state(q)
    np.testing.assert_array_equal(before[0], after[0])
    assert not bool(q.initialized[...])
    want = _reference_step(before[0], before[1], z, mask, decay=0.0)
    np.testing.assert_array_equal(np.asarray(out.indices), want["indices"])
    np.testing.assert_array_equal(np.asarray(q.encode(z)), want["indices"])
    np.testing.assert_allclose(np.asarray(q.lookup(out.indices)), want["quantized"], atol=1e-6)


def test_kmeans_init_uses_real_vectors_only():
    rng = np.random.default_rng(0)
    centers = _np_l2(rng.normal(size=(5, D)))
    labels = np.arange(200) % 5
    z = centers[labels] + 0.02 * rng.normal(size=(200, D))
    mask = labels != 4  # the fifth direction is padding and must be ignored
    means, counts = spherical_kmeans(jax.random.key(1), jnp.asarray(_np_l2(z)), jnp.asarray(mask), 8, 10)
    means = np.asarray(means, np.float64)
    np.testing.assert_allclose(np.linalg.norm(means, axis=-1), 1.0, atol=1e-5)
    cos = means @ centers.T  # [8, 5]
    assert (cos[:, :4].max(0) > 0.99).all()  # each real cluster has a code
    assert cos[:, 4].max() < 0.9  # no code sits on the padding direction
    assert float(np.asarray(counts).sum()) == mask.sum()


def test_kmeans_runs_on_first_update_only():
    q = EmaCodebookQuantizer(K, D, decay=0.99, kmeans_iters=5, rngs=nnx.Rngs(0))
    random_init = _state(q)[0]
    z, mask = _data(0)
    q(z, mask, update=True)
    assert bool(q.initialized[...])
    first = _state(q)[0]
    np.testing.assert_allclose(np.linalg.norm(first, axis=-1), 1.0, atol=1e-5)
    assert np.abs(first - random_init).max() > 0.5  # k-means replaced the init
    q(-z, mask, update=True)  # very different batch
    second = _state(q)[0]
    # One EMA step with decay 0.99 moves a unit code by at most ~0.02; k-means
    # on the new batch would have moved them far.
    assert np.abs(second - first).max() < 0.05


def test_straight_through_gradient_is_l2_normalize_gradient():
    q = EmaCodebookQuantizer(K, D, rngs=nnx.Rngs(0))
    z, mask = _data(2)
    w = np.random.default_rng(3).normal(size=z.shape)

    def f(z):
        return jnp.sum(q(z, mask, update=False).quantized * w)

    got = np.asarray(jax.grad(f)(jnp.asarray(z)), np.float64)
    z64 = z.astype(np.float64)
    norm = np.linalg.norm(z64, axis=-1, keepdims=True)
    zhat = z64 / norm
    want = (w - (w * zhat).sum(-1, keepdims=True) * zhat) / norm
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The codebook term has no gradient into z (sg on l2(z)).
    g_cb = jax.grad(lambda z: q(z, mask, update=False).codebook_loss)(jnp.asarray(z))
    assert float(jnp.abs(g_cb).max()) == 0.0


def test_zero_vector_normalizes_to_zero_with_finite_grad():
    x = jnp.zeros((2, D))
    np.testing.assert_array_equal(np.asarray(l2_normalize(x)), 0.0)
    grad = jax.grad(lambda x: jnp.sum(l2_normalize(x)))(x)
    assert np.isfinite(np.asarray(grad)).all()


def test_codebook_state_is_not_a_param():
    q = EmaCodebookQuantizer(K, D, rngs=nnx.Rngs(0))
    assert not jax.tree.leaves(nnx.state(q, nnx.Param))
    codebook_state = nnx.state(q, CodebookVariable)
    assert {"codebook", "cluster_size", "initialized"} <= set(codebook_state.keys())
    assert not isinstance(q.codebook, nnx.Param)


def test_dead_codes_restart_on_real_vectors_live_codes_follow_ema():
    q = EmaCodebookQuantizer(K, D, decay=0.9, kmeans_iters=3, dead_code_patience=1, rngs=nnx.Rngs(0))
    q(*_data(0), update=True)  # k-means init + first step
    unused_before = np.asarray(q.unused_steps[...])
    codebook, cluster_size = _state(q)
    z, mask = _data(1)
    want = _reference_step(codebook, cluster_size, z, mask, decay=0.9)
    q(z, mask, update=True)
    new_codebook, _ = _state(q)
    unused = np.where(want["counts"] > 0, 0, unused_before + 1)
    dead = unused >= 1
    assert dead.any() and not dead.all()
    # Live codes: exactly the EMA step, their idle counters advanced or reset.
    np.testing.assert_allclose(new_codebook[~dead], want["codebook"][~dead], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(q.unused_steps[...]), np.where(dead, 0, unused))
    # Dead codes: each now sits on a real (non-padding) word of the batch.
    real = _np_l2(z[mask].astype(np.float64))
    padding = _np_l2(z[~mask].astype(np.float64))
    for code in new_codebook[dead]:
        assert np.abs(real - code).max(-1).min() < 1e-5
        assert np.abs(padding - code).max(-1).min() > 1e-3


def test_no_restart_without_patience():
    q = EmaCodebookQuantizer(K, D, decay=0.9, kmeans_iters=3, rngs=nnx.Rngs(0))
    for seed in range(3):
        codebook, cluster_size = _state(q)
        z, mask = _data(seed)
        q(z, mask, update=True)
    np.testing.assert_allclose(
        _state(q)[0], _reference_step(codebook, cluster_size, z, mask, 0.9)["codebook"], atol=1e-5
    )
