"""ECGFormer (paper §2.2): the Transformer backbone shared by every HeartLang stage.

A sentence is L words of T samples. Words are embedded by a circular 1-D conv
over the sentence axis, get learnable lead (spatial) and time (temporal)
embeddings, and go through pre-norm Transformer blocks whose attention rotates
Q and K with RoPE. position="learned" reproduces the released code instead: a
learned absolute position embedding and a prepended CLS token, no RoPE. The
released block details (no Q/K/V bias, LayerNorm epsilon 1e-5, PyTorch's
initialisation) are three fields of their own, `RELEASED_BLOCK`.

The blocks are one `Block` whose parameters are stacked along a leading layer
axis (created with nnx.vmap) and applied with nnx.scan, so the compiled program
holds one block whatever the depth: compile time does not grow with num_layers.
Each layer's dropout streams carry their own key (split at creation), so masks
differ between layers and, through the stream counters, between steps.

Embedding and encoding are separate methods because masked pre-training swaps
words for a mask token in between (SPEC §5).
"""

import math
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from heartlang_jax.configs import typed as typed_config
from heartlang_jax.configs.typed import POSITIVE, RATE, field
from heartlang_jax.models import splash
from heartlang_jax.models.dropout import Dropout
from heartlang_jax.models.layer_norm import LayerNorm
from heartlang_jax.models.rope import apply_rope

_EMBED_INIT = nnx.initializers.normal(stddev=0.02)
_DENSE_INIT = nnx.initializers.truncated_normal(stddev=0.02)
# PyTorch's defaults, used by the released code: nn.Embedding and torch.randn are N(0, 1);
# nn.Linear draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_EMBED_INIT = nnx.initializers.normal(stddev=1.0)
_TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# The released code's block details: no Q/K/V bias (`to_qkv`, bias=False), PyTorch's LayerNorm
# epsilon and PyTorch's initialisation. The `:released` configs and converted models set them.
RELEASED_BLOCK: dict[str, Any] = {"qkv_bias": False, "layer_norm_epsilon": 1e-5, "released_init": True}


def torch_bias_init(fan_in: int):
    """nn.Linear's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@typed_config.checked
class ECGFormerConfig:
    """Sizes and switches of one ECGFormer.

    The attention inner width is num_heads * head_dim, projected back to
    hidden_dim, because the paper's Base (hidden 768, 10 heads) is not divisible.
    The defaults are the paper's RoPE model with this project's choices; the
    released architecture sets position="learned" and `RELEASED_BLOCK`. Every
    field is checked when the config is built (typed_config).
    """

    num_layers: int = field(check=POSITIVE)
    hidden_dim: int = field(check=POSITIVE)
    mlp_dim: int = field(check=POSITIVE)
    num_heads: int = field(check=POSITIVE)
    head_dim: int = field(default=64, check=POSITIVE)
    # Feature size of one input word (96 samples; code_dim for the VQ decoder).
    token_len: int = field(default=96, check=POSITIVE)
    max_len: int = field(default=256, check=POSITIVE)
    num_lead_ids: int = field(default=16, check=POSITIVE)
    num_time_ids: int = field(default=16, check=POSITIVE)
    # "rope" (paper) or "learned" (released code: absolute positions + CLS).
    position: Literal["rope", "learned"] = "rope"
    # False reproduces the released code, where padding keys are attended.
    mask_padding: bool = True
    dropout_rate: float = field(default=0.0, check=RATE)
    attention_dropout_rate: float = field(default=0.0, check=RATE)
    rope_max_wavelength: float = field(default=10_000.0, check=POSITIVE)
    # Compute dtype; parameters are always float32.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Bias on the Q, K, V projections (False in the released code).
    qkv_bias: bool = True
    # LayerNorm epsilon: Flax's 1e-6; 1e-5 (PyTorch's) in the released code.
    layer_norm_epsilon: float = field(default=1e-6, check=POSITIVE)
    # PyTorch's initialisation as in the released code (N(0, 1) embeddings, CLS and positions,
    # nn.Linear's uniform weights and biases, zero mask token); False: std 0.02 normal.
    released_init: bool = False
    # Attention kernel: "auto" = cuDNN flash attention on GPU in bfloat16/float16, the Pallas
    # splash kernel on TPU (when the length tiles, models/splash.py), XLA otherwise.
    attention_implementation: Literal["auto", "xla", "cudnn", "splash"] = "auto"
    # Unroll the layer scan fully (benchmarks/step_anatomy.py unrolls to count FLOPs).
    scan_unroll: bool = False
    # What each layer keeps for the backward pass (REMAT_POLICIES; chosen by measurement with
    # benchmarks/step_anatomy.py, see benchmarks/RESULTS.md): "none" keeps everything autodiff
    # saves; "lean" keeps the fused QKV projection, the attention output, the residual stream
    # after attention and the MLP's pre-GELU hidden, and recomputes LayerNorms, RoPE, GELU,
    # dropout masks and the attention forward; "dots" keeps every matmul output; "full" keeps
    # only each layer's input.
    remat_policy: Literal["none", "lean", "dots", "full"] = "lean"

    # Set by a training stage from the dataset and `config.dtype`, never by a config file.
    DERIVED: ClassVar[tuple[str, ...]] = ("token_len", "max_len", "num_lead_ids", "num_time_ids", "dtype")

    def problems(self):
        if self.position == "rope" and self.head_dim % 2:
            yield "head_dim", f'must be even with position="rope", got {self.head_dim}'

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def embed_init(self):
        return _TORCH_EMBED_INIT if self.released_init else _EMBED_INIT


def dense(
    din: int, dout: int, config: ECGFormerConfig, rngs: nnx.Rngs, use_bias: bool = True, dtype=None
) -> nnx.Linear:
    """A Linear layer with the config's initialisation (0.02 truncated normal or PyTorch's)."""
    if config.released_init:
        inits = dict(kernel_init=_TORCH_KERNEL_INIT, bias_init=torch_bias_init(din))
    else:
        inits = dict(kernel_init=_DENSE_INIT)
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=config.compute_dtype if dtype is None else dtype, rngs=rngs, **inits
    )


def _layer_norm(dim: int, config: ECGFormerConfig, dtype: jnp.dtype, rngs: nnx.Rngs) -> LayerNorm:
    # Statistics in float32 whatever `dtype` is (as Flax's); the backward saves x and 2 floats a row.
    return LayerNorm(dim, epsilon=config.layer_norm_epsilon, dtype=dtype, rngs=rngs)


# Names of the activations the "lean" remat policy keeps (checkpoint_name in Attention and Block).
LEAN_SAVED = ("qkv", "attention", "attention_residual", "mlp_hidden")
REMAT_POLICIES = {
    "lean": jax.checkpoint_policies.save_only_these_names(*LEAN_SAVED),
    "dots": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def attention_kernel(config: ECGFormerConfig, backend: str | None = None) -> str:
    """The attention path the config takes on `backend` (default: JAX's): "xla", "cudnn" or "splash"."""
    if config.attention_implementation != "auto":
        return config.attention_implementation
    backend = backend or jax.default_backend()
    length = config.max_len + int(config.position == "learned")  # the released CLS
    if backend == "tpu" and splash.supports(length):
        return "splash"
    half = config.dtype in ("bfloat16", "float16")
    if backend == "gpu" and half and config.head_dim % 8 == 0 and config.head_dim <= 128:
        return "cudnn"
    return "xla"


class Attention(nnx.Module):
    """Multi-head self-attention with optional RoPE on Q and K.

    Q, K and V come from one fused projection. The attention itself is
    jax.nn.dot_product_attention with XLA's implementation (CPU) or cuDNN's fused
    flash attention (GPU in half precision, padding given as sequence lengths:
    no [B, 1, L, L] bias, no bias gradient), or the Pallas splash kernel on TPU
    (padding as segment ids, models/splash.py); `attention_kernel` picks one.
    None of them has dropout, so when attention dropout is active (rate > 0 and
    train mode) the probabilities are computed explicitly instead; the paths
    give the same result when dropout is off.
    """

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        inner = config.num_heads * config.head_dim
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.use_rope = config.position == "rope"
        self.max_wavelength = config.rope_max_wavelength
        self.implementation = attention_kernel(config)
        # One [D, 3 * inner] projection (columns: Q, then K, then V, as the released to_qkv). It
        # is initialised from three separate draws, in the order three Linears would make them,
        # so a seed gives the same values as the unfused layers did.
        parts = [dense(config.hidden_dim, inner, config, rngs, use_bias=config.qkv_bias) for _ in range(3)]
        self.qkv = dense(config.hidden_dim, 3 * inner, config, nnx.Rngs(0), use_bias=config.qkv_bias)
        self.qkv.kernel = nnx.Param(jnp.concatenate([p.kernel[...] for p in parts], axis=1))
        if config.qkv_bias:
            self.qkv.bias = nnx.Param(jnp.concatenate([p.bias[...] for p in parts]))  # type: ignore[index]
        self.out = dense(inner, config.hidden_dim, config, rngs)
        self.attn_dropout = Dropout(config.attention_dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [B, L, D]; key_mask [B, L] bool (True = may be attended) or None."""
        batch, length, _ = x.shape
        qkv = checkpoint_name(self.qkv(x), "qkv").reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, N, H] each
        if self.use_rope:
            positions = jnp.arange(length)  # [L]
            q = apply_rope(q, positions, self.max_wavelength)
            k = apply_rope(k, positions, self.max_wavelength)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B,1,1,L]
        if self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic:
            out = self._attend_with_dropout(q, k, v, mask)
        elif self.implementation == "splash":
            out = splash.splash_attention(q, k, v, key_mask)
        elif self.implementation == "cudnn":
            # Padding is a suffix of every sentence, so sequence lengths say what the mask says:
            # cuDNN's padding mask needs no [B, 1, L, L] bias and computes no bias gradient.
            # Queries past the length come out 0 (padding outputs are meaningless anyway).
            lengths = None if key_mask is None else jnp.sum(key_mask, axis=-1, dtype=jnp.int32)  # [B]
            out = jax.nn.dot_product_attention(
                q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
            )
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
        out = checkpoint_name(out, "attention")
        return self.out(out.reshape(batch, length, -1))  # [B, L, D]

    def _attend_with_dropout(self, q, k, v, mask):
        logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)  # [B, N, L, L]
        logits = logits / jnp.sqrt(jnp.float32(self.head_dim))
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = self.attn_dropout(jax.nn.softmax(logits, axis=-1))
        return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)


class Mlp(nnx.Module):
    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.fc1 = dense(config.hidden_dim, config.mlp_dim, config, rngs)
        self.fc2 = dense(config.mlp_dim, config.hidden_dim, config, rngs)
        self.dropout = Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Exact GELU, as torch.nn.GELU in the released code.
        h = self.dropout(jax.nn.gelu(checkpoint_name(self.fc1(x), "mlp_hidden"), approximate=False))
        return self.fc2(h)


class Block(nnx.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config.hidden_dim, config, config.compute_dtype, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.norm2 = _layer_norm(config.hidden_dim, config, config.compute_dtype, rngs)
        self.mlp = Mlp(config, rngs=rngs)
        self.dropout = Dropout(config.dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        x = checkpoint_name(x + self.dropout(self.attn(self.norm1(x), key_mask)), "attention_residual")
        return x + self.dropout(self.mlp(self.norm2(x)))


def stacked_blocks(config: ECGFormerConfig, rngs: nnx.Rngs) -> Block:
    """num_layers Blocks as one Block whose parameters and dropout keys are stacked on axis 0."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs)

    return create(rngs)


def _apply_blocks(x: jax.Array, block: Block, key_mask: jax.Array | None, config: ECGFormerConfig) -> jax.Array:
    """x [B, L, D] through each layer of the stacked `block` in turn."""

    def layer(x: jax.Array, block: Block, key_mask: jax.Array | None) -> jax.Array:
        return block(x, key_mask)

    if config.remat_policy != "none":
        layer = nnx.remat(layer, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=False)
    scan = nnx.scan(layer, in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry, unroll=config.scan_unroll)
    return scan(x, block, key_mask)


class ECGFormer(nnx.Module):
    """Backbone: words [B, L, T] + lead/time ids [B, L] -> [B, L(+1), D].

    A word is padding iff its lead id is 0. With mask_padding, padding keys are
    never attended, so outputs of real words do not depend on how much padding
    follows (given the sentence already ends with a padding word; the circular
    conv wraps the last word onto the first). Outputs at padding positions are
    computed but meaningless.

    `blocks` holds every layer stacked: `blocks.attn.query.kernel` is
    [num_layers, D, N * H]; `layer(i)` gives layer i alone (for inspection).
    """

    def __init__(self, config: ECGFormerConfig, *, rngs: nnx.Rngs):
        self.config = config
        dim, dtype = config.hidden_dim, config.compute_dtype
        # Informer TokenEmbedding: Conv1d(T -> D, kernel 3, circular, no bias).
        self.token_embed = nnx.Conv(
            config.token_len,
            dim,
            kernel_size=3,
            padding="CIRCULAR",
            use_bias=False,
            dtype=dtype,
            kernel_init=nnx.initializers.kaiming_normal(),
            rngs=rngs,
        )
        self.lead_embed = nnx.Embed(config.num_lead_ids, dim, dtype=dtype, embedding_init=config.embed_init, rngs=rngs)
        self.time_embed = nnx.Embed(config.num_time_ids, dim, dtype=dtype, embedding_init=config.embed_init, rngs=rngs)
        if self.has_cls:
            self.cls_token = nnx.Param(config.embed_init(rngs.params(), (dim,)))
            self.pos_embed = nnx.Param(config.embed_init(rngs.params(), (config.max_len + 1, dim)))
        self.embed_dropout = Dropout(config.dropout_rate, rngs=rngs)
        self.blocks = stacked_blocks(config, rngs)
        # The final norm outputs float32 so every head starts from float32.
        self.final_norm = _layer_norm(dim, config, jnp.float32, rngs)

    @property
    def has_cls(self) -> bool:
        return self.config.position == "learned"

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens prepended to the sentence in encode()'s output (CLS: 1)."""
        return int(self.has_cls)

    def layer(self, i: int) -> Block:
        """A standalone copy of block i (its parameters sliced out of the stack)."""
        graphdef, state = nnx.split(self.blocks)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

    def embed_words(self, words: jax.Array) -> jax.Array:
        """words [B, L, T] -> [B, L, D]; each output mixes a word and its neighbours."""
        return self.token_embed(words.astype(self.config.compute_dtype))

    def encode(
        self, x: jax.Array, lead_ids: jax.Array, time_ids: jax.Array, num_blocks: int | None = None
    ) -> jax.Array:
        """x [B, L, D] word embeddings -> [B, L + num_prefix_tokens, D] float32.

        `num_blocks` (a Python int, 0..num_layers; None = all) runs only the first blocks, then the
        final norm: the features of an intermediate layer, from the same stacked parameters (sliced,
        not copied into a second model).
        """
        batch, length, dim = x.shape
        if length > self.config.max_len:
            raise ValueError(f"Sentence length {length} exceeds max_len {self.config.max_len}.")
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
        blocks = self.blocks
        if num_blocks is not None and num_blocks != self.config.num_layers:
            if not 0 <= num_blocks <= self.config.num_layers:
                raise ValueError(f"num_blocks must be in 0..{self.config.num_layers}, got {num_blocks}")
            graphdef, state = nnx.split(self.blocks)
            blocks = nnx.merge(graphdef, jax.tree.map(lambda a: a[:num_blocks], state))
        if num_blocks != 0:
            x = _apply_blocks(x, blocks, key_mask, self.config)
        return self.final_norm(x)

    def __call__(self, words: jax.Array, lead_ids: jax.Array, time_ids: jax.Array) -> jax.Array:
        """words [B, L, T], ids [B, L] -> [B, L + num_prefix_tokens, D] float32."""
        return self.encode(self.embed_words(words), lead_ids, time_ids)
