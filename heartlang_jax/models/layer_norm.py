"""LayerNorm whose backward pass keeps only its input and two float32 statistics per row.

Flax's LayerNorm computes in float32 and autodiff then saves several float32 copies of the
[B, L, D] input for the backward pass (6 per Base layer, 14.5 GB of a batch-256 step in
bfloat16). Here the gradient is written by hand (custom_vjp): the forward saves the input in its
own dtype (bfloat16 in training) and the per-row mean and 1/std in float32; the backward
recomputes the normalized input from them. The forward is Flax's formula (mean and E[x^2] - mean^2
in float32, variance clipped at 0), so outputs match nnx.LayerNorm; the parameters are the same
`scale` and `bias`, so checkpoints and the released-weight converter are unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _stats(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) - jnp.square(mean), 0.0)
    return xf, mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype: str) -> jax.Array:
    """LayerNorm over the last axis of x [..., D] with float32 scale and bias [D]; output in `dtype`."""
    xf, mean, rstd = _stats(x, epsilon)
    return ((xf - mean) * (rstd * scale) + bias).astype(dtype)


def _forward(x, scale, bias, epsilon, dtype):
    xf, mean, rstd = _stats(x, epsilon)
    y = ((xf - mean) * (rstd * scale) + bias).astype(dtype)
    return y, (x, mean, rstd, scale)


def _backward(epsilon, dtype, residuals, grad):
    del epsilon, dtype
    x, mean, rstd, scale = residuals
    g = grad.astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    lead = tuple(range(x.ndim - 1))
    d_bias = jnp.sum(g, axis=lead)
    d_scale = jnp.sum(g * xhat, axis=lead)
    d_xhat = g * scale
    d_x = rstd * (
        d_xhat - jnp.mean(d_xhat, axis=-1, keepdims=True) - xhat * jnp.mean(d_xhat * xhat, axis=-1, keepdims=True)
    )
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nnx.Module):
    """nnx.LayerNorm's parameters (`scale` ones, `bias` zeros, float32) and forward, with the lean backward."""

    def __init__(self, dim: int, *, epsilon: float, dtype, rngs: nnx.Rngs):
        # Two draws from the params stream, as nnx.LayerNorm makes, so the initialisation of every
        # later parameter stays what it was.
        rngs.params()
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        rngs.params()
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.epsilon = epsilon
        self.dtype = jnp.dtype(dtype).name

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon, self.dtype)
