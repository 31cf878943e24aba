"""Softmax cross-entropy over a large vocabulary that keeps only the logits' own dtype for backward.

optax's version, given bfloat16 logits, wants them float32 first: the LM head's
[B, M, V] logits (V = 8192) were cast to float32 (1 GiB at Base, batch 256) and autodiff saved
that copy and the softmax for the backward pass. Here the gradient is written by hand
(custom_vjp): the forward reads the logits in their dtype, upcasts inside the reduction (XLA fuses
the cast, no float32 array of all logits is kept) and saves the logits as they came plus one
float32 log-sum-exp per row; the backward forms softmax - one_hot from them, in float32, and
returns the gradient in the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _log_sum_exp(logits: jax.Array) -> jax.Array:
    x = logits.astype(jnp.float32)
    peak = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (peak + jnp.log(jnp.sum(jnp.exp(x - peak), axis=-1, keepdims=True)))[..., 0]


def _picked(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0].astype(jnp.float32)


@jax.custom_vjp
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] in float32; logits [..., V] (any float dtype), labels [...] int."""
    return _log_sum_exp(logits) - _picked(logits, labels)


def _forward(logits, labels):
    lse = _log_sum_exp(logits)
    return lse - _picked(logits, labels), (logits, labels, lse)


def _backward(residuals, grad):
    logits, labels, lse = residuals
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return ((probs - one_hot) * grad[..., None]).astype(logits.dtype), None


softmax_cross_entropy.defvjp(_forward, _backward)
