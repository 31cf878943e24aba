"""Masked ECG-sentence pre-training model (paper §2.4).

Half of each sentence's real words are replaced by a learnable mask token
after the token embedding and before the lead/time embeddings; the model
predicts their VQ-HBR codebook indices.

The LM head is applied only at masked positions: `masked_positions` turns
the [B, L] mask into a fixed number M of positions per sentence (static
shape, so jit compiles once), and `logits_at` gathers the hidden states
there, giving logits [B, M, V] instead of [B, L, V]. With ratio 0.5,
M = ceil(0.5 * L) always suffices.

Note: the token embedding is a kernel-3 conv, so an unmasked neighbour's
embedding still sees a masked word's samples (as in the released code).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from heartlang_jax.models.cross_entropy import softmax_cross_entropy
from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig, dense

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


def sample_mask(rng: jax.Array, lead_ids: jax.Array, ratio: float = 0.5, draw_len: int | None = None) -> jax.Array:
    """Chooses exactly round(ratio * num_real) real words per sentence.

    Rounding is half-to-even (as numpy.round). Padding is never chosen.

    Args:
        rng: PRNG key.
        lead_ids: [B, L] int, 0 = padding.
        ratio: fraction of real words to mask.
        draw_len: draw the random scores for rows of this length (>= L) and keep the first L,
            so a batch cut to a length bucket (packing.py) masks the words the full-length
            batch would with the same key. None: L.

    Returns:
        [B, L] bool, True = replace by the mask token.
    """
    real = lead_ids != 0  # [B, L]
    num_mask = jnp.round(ratio * jnp.sum(real, axis=-1))  # [B]
    draws = jax.random.uniform(rng, (real.shape[0], max(draw_len or 0, real.shape[1])))[:, : real.shape[1]]
    scores = jnp.where(real, draws, 2.0)
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # padding last
    return ranks < num_mask[:, None]


def masked_positions(mask: jax.Array, num_positions: int) -> tuple[jax.Array, jax.Array]:
    """The first `num_positions` masked indices of each sentence, in order.

    Args:
        mask: [B, L] bool from sample_mask.
        num_positions: M, a static bound on masked words per sentence.

    Returns:
        positions [B, M] int32 and valid [B, M] bool; a sentence with fewer than M
        masked words is filled with unmasked positions whose valid is False
        (weight them 0 in the loss). Masked words beyond M are dropped.
    """
    order = jnp.argsort(~mask, axis=-1, stable=True)[:, :num_positions]
    valid = jnp.take_along_axis(mask, order, axis=-1)
    return order.astype(jnp.int32), valid


class MaskedEcgModel(nnx.Module):
    """ECGFormer + mask token + LM head over the codebook vocabulary."""

    def __init__(self, encoder_config: ECGFormerConfig, vocab_size: int, *, rngs: nnx.Rngs):
        dim = encoder_config.hidden_dim
        self.encoder = ECGFormer(encoder_config, rngs=rngs)
        if encoder_config.released_init:  # released: zeros, PyTorch's nn.Linear head
            self.mask_token = nnx.Param(jnp.zeros((dim,), jnp.float32))  # [D]
            self.lm_head = dense(dim, vocab_size, encoder_config, rngs)
        else:
            self.mask_token = nnx.Param(_INIT(rngs.params(), (dim,)))  # [D]
            self.lm_head = nnx.Linear(dim, vocab_size, dtype=encoder_config.compute_dtype, kernel_init=_INIT, rngs=rngs)

    def __call__(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """words [B, L, T], ids [B, L], mask [B, L] bool -> hidden [B, L, D].

        CLS (learned-position mode) is stripped from the output.
        """
        x = self.encoder.embed_words(words)  # [B, L, D]
        token = self.mask_token[...].astype(x.dtype)
        x = jnp.where(mask[..., None], token, x)
        hidden = self.encoder.encode(x, lead_ids, time_ids)
        return hidden[:, self.encoder.num_prefix_tokens :]

    def logits_at(self, hidden: jax.Array, positions: jax.Array) -> jax.Array:
        """hidden [B, L, D], positions [B, M] -> float32 logits [B, M, V]."""
        return self.head_logits(hidden, positions).astype(jnp.float32)

    def head_logits(self, hidden: jax.Array, positions: jax.Array) -> jax.Array:
        """hidden [B, L, D], positions [B, M] -> logits [B, M, V] in the compute dtype (the loss
        upcasts inside its reductions, so no float32 copy of all logits is made)."""
        picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [B,M,D]
        return self.lm_head(picked)


def num_mask_positions(max_len: int, ratio: float) -> int:
    """Static bound M on masked words per sentence: sample_mask masks round(ratio * n) <= ceil(ratio * L)."""
    return math.ceil(ratio * max_len)


def masked_lm_loss(model: MaskedEcgModel, batch, rng, mask_ratio: float):
    """Cross-entropy on masked words only; the LM head sees only the M masked positions."""
    mask = sample_mask(rng, batch["lead_ids"], mask_ratio, model.encoder.config.max_len)  # [B, L]
    positions, valid = masked_positions(mask, num_mask_positions(mask.shape[1], mask_ratio))  # [B, M]
    hidden = model(batch["words"], batch["lead_ids"], batch["time_ids"], mask)  # [B, L, D]
    logits = model.head_logits(hidden, positions)  # [B, M, V] compute dtype
    targets = jnp.take_along_axis(batch["targets"], positions, axis=1)  # [B, M]
    weights = valid.astype(jnp.float32)
    if "mask" in batch:  # padded eval rows
        weights = weights * batch["mask"][:, None]
    ce = softmax_cross_entropy(logits, targets)  # [B, M] float32
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(ce * weights) / jnp.maximum(count, 1.0), {
        "ce_sum": jnp.sum(ce * weights),
        "correct": jnp.sum(correct * weights),
        "count": count,
        "target_counts": jnp.zeros(logits.shape[-1], jnp.int32).at[targets].add(weights.astype(jnp.int32)),
    }
