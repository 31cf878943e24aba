"""Rotary position embedding exactly as printed in the HeartLang paper (§2.2.3).

The paper rotates interleaved (even, odd) feature pairs with

  out[2j]   =  x[2j] cos(theta) + x[2j+1] sin(theta)
  out[2j+1] = -x[2j] sin(theta) + x[2j+1] cos(theta)

which is R(-theta) in the usual notation. It is still a rotation, so
<rope(q, i), rope(k, j)> depends only on i - j, the property attention needs.
"""

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, head_dim: int, max_wavelength: float = 10_000.0) -> jax.Array:
    """theta_{i,j} = i / max_wavelength^(2j/H) for j < H/2, in float32.

    Args:
        positions: [..., L] integer or float positions i.
        head_dim: H, the rotated feature size (even).
        max_wavelength: the 10000 of the paper's formula.

    Returns:
        [..., L, H/2] float32 angles.
    """
    fraction = 2.0 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (max_wavelength**fraction)  # [H/2]
    return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotates queries or keys by their sequence position.

    Args:
        x: [B, L, N, H] per-head features, H even.
        positions: [B, L] or [L] positions i (0 for the first word).
        max_wavelength: the 10000 of the paper's formula.

    Returns:
        [B, L, N, H], same dtype as x; the rotation itself runs in float32.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"apply_rope needs an even head dim, got {head_dim}.")
    theta = rope_angles(positions, head_dim, max_wavelength)  # [B?, L, H/2]
    theta = theta[..., None, :]  # [B?, L, 1, H/2], shared by all heads
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    xf = x.astype(jnp.float32)
    x_even, x_odd = xf[..., 0::2], xf[..., 1::2]  # [B, L, N, H/2] each
    out_even = x_even * cos + x_odd * sin
    out_odd = -x_even * sin + x_odd * cos
    out = jnp.stack([out_even, out_odd], axis=-1).reshape(x.shape)  # interleave
    return out.astype(x.dtype)
