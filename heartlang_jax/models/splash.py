"""TPU attention: JAX's shipped Pallas splash-attention kernel, with padding as segment ids.

`attention_implementation="auto"` picks it on TPU (`"splash"` asks for it anywhere). Real words
are segment 1 and padding segment 0, so a real word attends only real words (what the boolean
key mask of the XLA path says) and a padding query attends padding, which keeps every softmax
row non-empty; outputs at padding are meaningless, as on the other paths. Splash takes queries
unscaled, so they are multiplied by 1/sqrt(head_dim) first. Off TPU the kernel runs in Pallas
interpret mode (slow; for tests on CPU) unless `INTERPRET` says otherwise (the step-anatomy
benchmark sets it False to lower the TPU program on a CPU machine).

The kernel tiles the sequence in blocks of 128 (TPU lanes); `supports` says whether a length tiles
(a CLS-prefixed sentence of 257 does not, and falls back to XLA's attention).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

# None: interpret everywhere but on TPU.
INTERPRET: bool | None = None
_MAX_BLOCK = 128


def _block(length: int) -> int:
    return _MAX_BLOCK


def supports(length: int) -> bool:
    """True when a sentence of `length` tiles into the kernel's 128-long blocks (its lane width)."""
    return length % _MAX_BLOCK == 0


def _kernel(length: int, num_heads: int, interpret: bool):
    block = _block(length)
    sizes = kernel_lib.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = mask_lib.MultiHeadMask([mask_lib.FullMask((length, length))] * num_heads)
    return kernel_lib.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """q, k, v [B, L, N, H]; key_mask [B, L] bool (True = real) or None -> [B, L, N, H]."""
    _, length, num_heads, head_dim = q.shape
    interpret = jax.default_backend() != "tpu" if INTERPRET is None else INTERPRET
    # Built per trace (not cached): the kernel holds arrays made while tracing.
    kernel = _kernel(length, num_heads, interpret)
    q = (q.astype(jnp.float32) / math.sqrt(head_dim)).astype(k.dtype)

    def one(q, k, v, segments):  # [N, L, H] each, segments [L] or None
        ids = None if segments is None else kernel_lib.SegmentIds(q=segments, kv=segments)
        return kernel(q, k, v, segment_ids=ids)

    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, N, L, H]
    segments = None if key_mask is None else key_mask.astype(jnp.int32)
    out = jax.vmap(one, in_axes=(0, 0, 0, None if segments is None else 0))(qh, kh, vh, segments)
    return jnp.swapaxes(out, 1, 2)
