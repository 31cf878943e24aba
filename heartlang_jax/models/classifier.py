"""Downstream classifier (paper §3): ECGFormer + one linear head.

The head reads the CLS token in learned-position mode (released code) and
the mean of the real words otherwise. `encoder` carries the same attribute
name as in MaskedEcgModel so pre-trained weights transfer by path; linear
probing freezes `encoder` and trains `head` only.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig, dense


class EcgClassifier(nnx.Module):
    """One logit per class; apply sigmoid + BCE for the multi-label tasks."""

    def __init__(self, encoder_config: ECGFormerConfig, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = ECGFormer(encoder_config, rngs=rngs)
        if encoder_config.released_init:  # released: PyTorch's nn.Linear init
            self.head = dense(encoder_config.hidden_dim, num_classes, encoder_config, rngs, dtype=jnp.float32)
        else:
            self.head = nnx.Linear(
                encoder_config.hidden_dim, num_classes, kernel_init=nnx.initializers.truncated_normal(0.02), rngs=rngs
            )

    def features(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """Sentence representation [B, D] float32 fed to the head."""
        hidden = self.encoder(words, lead_ids, time_ids)  # [B, L(+1), D]
        if self.encoder.has_cls:
            return hidden[:, 0]
        real = (lead_ids != 0).astype(hidden.dtype)[..., None]  # [B, L, 1]
        return jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)

    def __call__(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """words [B, L, T], ids [B, L] -> logits [B, C] float32."""
        return self.head(self.features(words, lead_ids, time_ids))


def classifier_bce_loss(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array | None = None) -> jax.Array:
    """Mean sigmoid BCE over examples and classes (torch's BCEWithLogitsLoss).

    `pos_weight` ([C], or [B, C] rows of it) multiplies each class's positive term, as torch's
    `pos_weight` does: -(w y log s(x) + (1 - y) log(1 - s(x))). None is the plain loss."""
    logits = logits.astype(jnp.float32)
    if pos_weight is None:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    positive = -jax.nn.log_sigmoid(logits)  # -log s(x)
    negative = -jax.nn.log_sigmoid(-logits)  # -log(1 - s(x))
    return jnp.mean(pos_weight.astype(jnp.float32) * labels * positive + (1.0 - labels) * negative)
