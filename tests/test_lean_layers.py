"""Issue 19's lean pieces against float64 NumPy: the hand-written LayerNorm and cross-entropy
gradients, the fused QKV, and the remat policies (same loss and gradients as no remat)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.models.cross_entropy import softmax_cross_entropy
from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig
from heartlang_jax.models.layer_norm import LayerNorm, layer_norm

TINY = ECGFormerConfig(num_layers=2, hidden_dim=16, mlp_dim=24, num_heads=2, head_dim=6, token_len=10, max_len=12)


def _np_layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _numeric_grad(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (f(up) - f(down)) / (2 * eps)
    return grad


def test_layer_norm_value_and_gradients_match_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 8)) * 2 + 0.5
    scale, bias = rng.normal(size=8), rng.normal(size=8)
    probe = rng.normal(size=(3, 4, 8))  # loss = sum(probe * y)

    def loss(x, scale, bias):
        return jnp.sum(jnp.asarray(probe, jnp.float32) * layer_norm(x, scale, bias, 1e-6, "float32"))

    args = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
    np.testing.assert_allclose(layer_norm(*args, 1e-6, "float32"), _np_layer_norm(x, scale, bias, 1e-6), atol=1e-5)
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    want = [
        _numeric_grad(lambda x: np.sum(probe * _np_layer_norm(x, scale, bias, 1e-6)), x),
        _numeric_grad(lambda s: np.sum(probe * _np_layer_norm(x, s, bias, 1e-6)), scale),
        _numeric_grad(lambda b: np.sum(probe * _np_layer_norm(x, scale, b, 1e-6)), bias),
    ]
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_layer_norm_matches_flax_and_keeps_bf16_input_for_backward():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.bfloat16)
    ours = LayerNorm(16, epsilon=1e-6, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    flax = nnx.LayerNorm(16, epsilon=1e-6, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(ours(x), np.float32), np.asarray(flax(x), np.float32))
    # What the backward keeps: the bfloat16 input and float32 [.., 1] statistics, no float32 [.., 16].
    _, residuals = jax.vjp(lambda x: ours(x), x)
    leaves = jax.tree.leaves(residuals)
    assert any(leaf.dtype == jnp.bfloat16 and leaf.shape == x.shape for leaf in leaves)
    assert not any(leaf.dtype == jnp.float32 and leaf.shape == x.shape for leaf in leaves)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_value_and_gradient_match_float64(dtype):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(3, 5, 50)) * 3).astype(np.float32)
    logits = np.asarray(jnp.asarray(logits, dtype).astype(jnp.float32), np.float64)  # exactly representable
    labels = rng.integers(0, 50, size=(3, 5))
    weights = rng.uniform(size=(3, 5))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    want_grad = (np.exp(log_probs) - np.eye(50)[labels]) * weights[..., None]

    def loss(logits):
        return jnp.sum(softmax_cross_entropy(logits, jnp.asarray(labels)) * jnp.asarray(weights, jnp.float32))

    x = jnp.asarray(logits, dtype)
    got = softmax_cross_entropy(x, jnp.asarray(labels))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    grad = jax.grad(loss)(x)
    assert grad.dtype == x.dtype
    tol = 1e-6 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(np.asarray(grad, np.float64), want_grad, atol=tol)


def test_fused_qkv_keeps_the_unfused_initialisation():
    """The fused kernel is the three separately drawn Q, K, V kernels side by side: a seed gives
    what three Linears would (so runs seeded before the fusion start from the same weights)."""
    model = ECGFormer(TINY, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.blocks.attn.qkv.kernel[...])  # [layers, D, 3 * inner]
    q, k, v = np.split(kernel, 3, axis=-1)
    assert np.abs(q - k).max() > 1e-3 and np.abs(k - v).max() > 1e-3
    assert 0.01 < float(np.std(q)) < 0.03  # truncated normal 0.02 each


@pytest.mark.parametrize("policy", ["lean", "dots", "full"])
def test_remat_policies_leave_loss_and_gradients_unchanged(policy):
    rng = np.random.default_rng(3)
    words = jnp.asarray(rng.normal(size=(2, 12, 10)), jnp.float32)
    lead_ids = jnp.asarray(np.where(np.arange(12) < np.array([[7], [12]]), 1, 0), jnp.int32)
    time_ids = jnp.asarray(np.arange(12)[None].repeat(2, 0) % 4, jnp.int32)
    config = dataclasses.replace(TINY, dropout_rate=0.2)

    def loss_and_grads(remat):
        model = ECGFormer(dataclasses.replace(config, remat_policy=remat), rngs=nnx.Rngs(0))
        model.train()

        def loss(model):
            return jnp.sum(jnp.sin(model(words, lead_ids, time_ids)))

        value, grads = nnx.value_and_grad(loss)(model)
        return float(value), jax.tree.leaves(nnx.to_pure_dict(grads))

    value, grads = loss_and_grads("none")
    value_p, grads_p = loss_and_grads(policy)
    assert value_p == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, grads_p):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
