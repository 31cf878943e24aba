"""ECGFormer (paper §2.2): the Transformer backbone shared by every HeartLang stage.

A sentence is L words of T samples. Words are embedded by a circular 1-D conv
over the sentence axis, get learnable lead (spatial) and time (temporal)
embeddings, and go through pre-norm Transformer blocks whose attention rotates
Q and K with RoPE. position="learned" reproduces the released code instead: a
learned absolute position embedding and a prepended CLS token, no RoPE.

Embedding and encoding are separate methods because masked pre-training swaps
words for a mask token in between (SPEC §5).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from heartlang_jax.models.dropout import Dropout
from heartlang_jax.models.rope import apply_rope

_POSITIONS = ("rope", "learned")
_DTYPES = ("float32", "bfloat16", "float16")
_EMBED_INIT = nnx.initializers.normal(stddev=0.02)
_DENSE_INIT = nnx.initializers.truncated_normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ECGFormerConfig:
    """Sizes and switches of one ECGFormer.

    The attention inner width is num_heads * head_dim, projected back to
    hidden_dim, because the paper's Base (hidden 768, 10 heads) is not divisible.
    """

    num_layers: int
    hidden_dim: int
    mlp_dim: int
    num_heads: int
    head_dim: int = 64
    # Feature size of one input word (96 samples; code_dim for the VQ decoder).
    token_len: int = 96
    max_len: int = 256
    num_lead_ids: int = 16
    num_time_ids: int = 16
    # "rope" (paper) or "learned" (released code: absolute positions + CLS).
    position: str = "rope"
    # False reproduces the released code, where padding keys are attended.
    mask_padding: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    rope_max_wavelength: float = 10_000.0
    # Compute dtype; parameters are always float32.
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("num_layers", "hidden_dim", "mlp_dim", "num_heads", "head_dim",
                     "token_len", "max_len", "num_lead_ids", "num_time_ids"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ECGFormerConfig.{name} must be a positive int, "
                                 f"got {value!r}.")
        if self.position not in _POSITIONS:
            raise ValueError(f"ECGFormerConfig.position must be one of {_POSITIONS}, "
                             f"got {self.position!r}.")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError("ECGFormerConfig.head_dim must be even with "
                             f'position="rope", got {self.head_dim}.')
        for name in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ECGFormerConfig.{name} must be in [0, 1), "
                                 f"got {value!r}.")
        if self.rope_max_wavelength <= 0:
            raise ValueError("ECGFormerConfig.rope_max_wavelength must be positive, "
                             f"got {self.rope_max_wavelength!r}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ECGFormerConfig.dtype must be one of {_DTYPES}, "
                             f"got {self.dtype!r}.")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


def _dense(din: int, dout: int, config: ECGFormerConfig, rngs: nnx.Rngs,
           use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=config.compute_dtype,
                      kernel_init=_DENSE_INIT, rngs=rngs)


def _layer_norm(dim: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Flax computes LayerNorm statistics in float32 whatever `dtype` is.
    return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with optional RoPE on Q and K.

    Uses jax.nn.dot_product_attention (fused kernels on accelerators). That
    function has no dropout, so when attention dropout is active (rate > 0 and
    train mode) the probabilities are computed explicitly instead; the two
    paths give the same result when dropout is off.
    """

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        inner = config.num_heads * config.head_dim
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.use_rope = config.position == "rope"
        self.max_wavelength = config.rope_max_wavelength
        self.query = _dense(config.hidden_dim, inner, config, rngs)
        self.key = _dense(config.hidden_dim, inner, config, rngs)
        self.value = _dense(config.hidden_dim, inner, config, rngs)
        self.out = _dense(inner, config.hidden_dim, config, rngs)
        self.attn_dropout = Dropout(config.attention_dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [B, L, D]; key_mask [B, L] bool (True = may be attended) or None."""
        batch, length, _ = x.shape
        split = (batch, length, self.num_heads, self.head_dim)
        q = self.query(x).reshape(split)  # [B, L, N, H]
        k = self.key(x).reshape(split)  # [B, L, N, H]
        v = self.value(x).reshape(split)  # [B, L, N, H]
        if self.use_rope:
            positions = jnp.arange(length)  # [L]
            q = apply_rope(q, positions, self.max_wavelength)
            k = apply_rope(k, positions, self.max_wavelength)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B,1,1,L]
        if self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic:
            out = self._attend_with_dropout(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, L, N, H]
        return self.out(out.reshape(batch, length, -1))  # [B, L, D]

    def _attend_with_dropout(self, q, k, v, mask):
        logits = jnp.einsum("btnh,bsnh->bnts", q, k,
                            preferred_element_type=jnp.float32)  # [B, N, L, L]
        logits = logits / jnp.sqrt(jnp.float32(self.head_dim))
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = self.attn_dropout(jax.nn.softmax(logits, axis=-1))
        return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)


class Mlp(nnx.Module):

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.fc1 = _dense(config.hidden_dim, config.mlp_dim, config, rngs)
        self.fc2 = _dense(config.mlp_dim, config.hidden_dim, config, rngs)
        self.dropout = Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Exact GELU, as torch.nn.GELU in the released code.
        h = self.dropout(jax.nn.gelu(self.fc1(x), approximate=False))
        return self.fc2(h)


class Block(nnx.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config.hidden_dim, config.compute_dtype, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.norm2 = _layer_norm(config.hidden_dim, config.compute_dtype, rngs)
        self.mlp = Mlp(config, rngs=rngs)
        self.dropout = Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        x = x + self.dropout(self.attn(self.norm1(x), key_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class ECGFormer(nnx.Module):
    """Backbone: words [B, L, T] + lead/time ids [B, L] -> [B, L(+1), D].

    A word is padding iff its lead id is 0. With mask_padding, padding keys are
    never attended, so outputs of real words do not depend on how much padding
    follows (given the sentence already ends with a padding word; the circular
    conv wraps the last word onto the first). Outputs at padding positions are
    computed but meaningless.
    """

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.config = config
        dim, dtype = config.hidden_dim, config.compute_dtype
        # Informer TokenEmbedding: Conv1d(T -> D, kernel 3, circular, no bias).
        self.token_embed = nnx.Conv(
            config.token_len, dim, kernel_size=3, padding="CIRCULAR",
            use_bias=False, dtype=dtype,
            kernel_init=nnx.initializers.kaiming_normal(), rngs=rngs)
        self.lead_embed = nnx.Embed(config.num_lead_ids, dim, dtype=dtype,
                                    embedding_init=_EMBED_INIT, rngs=rngs)
        self.time_embed = nnx.Embed(config.num_time_ids, dim, dtype=dtype,
                                    embedding_init=_EMBED_INIT, rngs=rngs)
        if self.has_cls:
            self.cls_token = nnx.Param(_EMBED_INIT(rngs.params(), (dim,)))
            self.pos_embed = nnx.Param(
                _EMBED_INIT(rngs.params(), (config.max_len + 1, dim)))
        self.embed_dropout = Dropout(config.dropout_rate, rngs=rngs)
        self.blocks = nnx.List(
            [Block(config, rngs=rngs) for _ in range(config.num_layers)])
        # The final norm outputs float32 so every head starts from float32.
        self.final_norm = _layer_norm(dim, jnp.float32, rngs)

    @property
    def has_cls(self) -> bool:
        return self.config.position == "learned"

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens prepended to the sentence in encode()'s output (CLS: 1)."""
        return int(self.has_cls)

    def embed_words(self, words: jax.Array) -> jax.Array:
        """words [B, L, T] -> [B, L, D]; each output mixes a word and its neighbours."""
        return self.token_embed(words.astype(self.config.compute_dtype))

    def encode(self, x: jax.Array, lead_ids: jax.Array,
               time_ids: jax.Array) -> jax.Array:
        """x [B, L, D] word embeddings -> [B, L + num_prefix_tokens, D] float32."""
        batch, length, dim = x.shape
        if length > self.config.max_len:
            raise ValueError(f"Sentence length {length} exceeds max_len "
                             f"{self.config.max_len}.")
        dtype = self.config.compute_dtype
        x = x.astype(dtype) + self.lead_embed(lead_ids) + self.time_embed(time_ids)
        key_mask = lead_ids != 0  # [B, L]
        if self.has_cls:
            cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (batch, 1, dim))
            x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + L, D]
            x = x + self.pos_embed[: length + 1].astype(dtype)
            key_mask = jnp.pad(key_mask, ((0, 0), (1, 0)), constant_values=True)
        if not self.config.mask_padding:
            key_mask = None
        x = self.embed_dropout(x)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.final_norm(x)

    def __call__(self, words: jax.Array, lead_ids: jax.Array,
                 time_ids: jax.Array) -> jax.Array:
        """words [B, L, T], ids [B, L] -> [B, L + num_prefix_tokens, D] float32."""
        return self.encode(self.embed_words(words), lead_ids, time_ids)
