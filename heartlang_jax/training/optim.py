"""AdamW with linear warm-up and cosine decay, gradient clipping, and optional per-parameter scales.

Weight decay skips biases, LayerNorm scales, embedding tables and learned tokens (every parameter
with fewer than two dimensions or under an embedding), as in the released code's timm-style
parameter groups. Per-parameter learning-rate scales implement layer-wise decay for fine-tuning.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

_NO_DECAY_NAMES = ("lead_embed", "time_embed", "pos_embed", "cls_token", "mask_token")


def learning_rate_schedule(opt: Any, num_train_steps: int, warmup_steps: int) -> optax.Schedule:
    warmup_steps = min(warmup_steps, max(num_train_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(num_train_steps, warmup_steps + 1),
        end_value=opt.end_learning_rate,
    )


def _decays(path, value) -> bool:
    names = [str(getattr(p, "key", p)) for p in path]
    return value.ndim >= 2 and not any(name in _NO_DECAY_NAMES for name in names)


def weight_decay_mask(params):
    """True where decoupled weight decay applies (called by optax on the parameter tree)."""
    return jax.tree_util.tree_map_with_path(_decays, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-parameter factor (layer-wise lr decay)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(
    opt: Any,
    *,
    num_train_steps: int,
    warmup_steps: int,
    lr_scales=None,
) -> optax.GradientTransformation:
    """The full AdamW transformation; `lr_scales` is a tree like the parameters, or None."""
    schedule = learning_rate_schedule(opt, num_train_steps, warmup_steps)
    chain = []
    if opt.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=1e-8))
    if opt.weight_decay > 0:
        chain.append(optax.add_decayed_weights(opt.weight_decay, mask=weight_decay_mask))
    if lr_scales is not None:
        chain.append(scale_by_tree(lr_scales))
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)


def layer_id(path, num_layers: int):
    """BEiT's `get_layer_id`: embeddings 0, block i -> i + 1, final norm and head num_layers + 1.

    The encoder's blocks are stacked on a leading layer axis (`encoder/blocks/...` leaves are
    [num_layers, ...]), so for them this returns the array of ids 1..num_layers, one per layer; a
    path with an explicit block index (`encoder/blocks/<i>/...`, unstacked layouts) gives i + 1.
    """
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    if names[0] != "encoder" or names[1] == "final_norm":
        return num_layers + 1
    if names[1] == "blocks":
        if len(names) > 2 and names[2].isdigit():
            return int(names[2]) + 1
        return np.arange(1, num_layers + 1)
    return 0  # token/lead/time/position embeddings, CLS token


def layer_decay_scales(model: Any, decay: float):
    """Per-parameter lr factor decay^(num_layers + 1 - layer_id), a tree like the Param state.

    Leaves are Python floats, except the stacked blocks' leaves: float32 arrays [num_layers, 1, ...]
    (block i's row is decay^(num_layers - i)) that broadcast against their parameter.
    """
    num_layers = model.encoder.config.num_layers

    def scale(path, value):
        ids = layer_id(path, num_layers)
        if isinstance(ids, np.ndarray):
            factors = np.asarray(decay, np.float64) ** (num_layers + 1 - ids)
            return jnp.asarray(factors.reshape((-1,) + (1,) * (value.ndim - 1)), jnp.float32)
        return decay ** (num_layers + 1 - ids)

    return jax.tree_util.tree_map_with_path(scale, nnx.state(model, nnx.Param))
