"""ECGFormer: a float64 NumPy reference forward, padding, CLS, dtype, dropout."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.models.ecgformer import RELEASED_BLOCK, ECGFormer, ECGFormerConfig

TINY = ECGFormerConfig(num_layers=2, hidden_dim=16, mlp_dim=24, num_heads=2, head_dim=6, token_len=10, max_len=12)


def _batch(length=8, num_real=(5, 8), seed=0):
    """Random words; sentence b has num_real[b] real words, the rest padding."""
    rng = np.random.default_rng(seed)
    batch = len(num_real)
    words = rng.normal(size=(batch, length, TINY.token_len)).astype(np.float32)
    lead_ids = rng.integers(1, 13, size=(batch, length)).astype(np.int32)
    time_ids = rng.integers(1, 11, size=(batch, length)).astype(np.int32)
    for b, n in enumerate(num_real):
        words[b, n:] = 0.0
        lead_ids[b, n:] = 0
        time_ids[b, n:] = 0
    return words, lead_ids, time_ids


def _pad_to(arrays, length):
    return [np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]


# ---------------------------------------------------------------------------
# Independent float64 reference of the paper's backbone.


def _np(v):
    return np.asarray(v[...], np.float64)


def _layer_norm(x, norm, eps=1e-6, layer=None):
    scale, bias = _np(norm.scale), _np(norm.bias)
    if layer is not None:  # stacked blocks: this layer's row
        scale, bias = scale[layer], bias[layer]
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _dense(x, dense, layer=None):
    kernel = _np(dense.kernel)
    bias = None if dense.bias is None else _np(dense.bias)
    if layer is not None:
        kernel = kernel[layer]
        bias = None if bias is None else bias[layer]
    return x @ kernel + (0.0 if bias is None else bias)


def _rope(x):  # x [B, L, N, H]; out[2j] = x cos + y sin, out[2j+1] = -x sin + y cos
    length, head_dim = x.shape[1], x.shape[-1]
    i = np.arange(length)[:, None]
    j = np.arange(head_dim // 2)[None, :]
    theta = (i / 10000.0 ** (2 * j / head_dim))[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) + odd * np.sin(theta)
    out[..., 1::2] = -even * np.sin(theta) + odd * np.cos(theta)
    return out


_erf = np.vectorize(math.erf)


def _reference_forward(model, words, lead_ids, time_ids):
    """Layer by layer, each layer's weights sliced from the stacked `blocks` parameters."""
    cfg = model.config
    eps = cfg.layer_norm_epsilon
    w = np.asarray(words, np.float64)
    kernel = _np(model.token_embed.kernel)  # [3, T, D]
    # Circular conv along L: out[l] = sum_k x[(l + k - 1) mod L] @ W[k].
    x = sum(np.roll(w, 1 - k, axis=1) @ kernel[k] for k in range(3))
    x = x + _np(model.lead_embed.embedding)[lead_ids]
    x = x + _np(model.time_embed.embedding)[time_ids]
    real = lead_ids != 0
    if cfg.position == "learned":
        cls = np.broadcast_to(_np(model.cls_token), (x.shape[0], 1, x.shape[2]))
        x = np.concatenate([cls, x], axis=1) + _np(model.pos_embed)[: x.shape[1] + 1]
        real = np.pad(real, ((0, 0), (1, 0)), constant_values=True)
    if not cfg.mask_padding:
        real = np.ones_like(real)
    batch, length, _ = x.shape
    blocks = model.blocks
    for i in range(cfg.num_layers):
        h = _layer_norm(x, blocks.norm1, eps, i)
        shape = (batch, length, cfg.num_heads, cfg.head_dim)
        q, k, v = (part.reshape(shape) for part in np.split(_dense(h, blocks.attn.qkv, i), 3, axis=-1))
        if cfg.position == "rope":
            q, k = _rope(q), _rope(k)
        logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(cfg.head_dim)
        logits = np.where(real[:, None, None, :], logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("bnts,bsnh->btnh", probs, v).reshape(batch, length, -1)
        x = x + _dense(attn, blocks.attn.out, i)
        h = _dense(_layer_norm(x, blocks.norm2, eps, i), blocks.mlp.fc1, i)
        h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
        x = x + _dense(h, blocks.mlp.fc2, i)
    return _layer_norm(x, model.final_norm, eps)


def _randomize_params(model, scale=0.5, seed=0):
    """Large random weights so attention is far from uniform and RoPE matters."""
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), params))


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, num_layers=5),
        dataclasses.replace(TINY, num_layers=3, position="learned", mask_padding=False),
    ],
    ids=["rope", "rope-5-layers", "learned-released"],
)
def test_matches_numpy_reference(config):
    """The scanned blocks equal a per-layer float64 NumPy forward of the same weights."""
    model = ECGFormer(config, rngs=nnx.Rngs(0))
    _randomize_params(model)
    words, lead_ids, time_ids = _batch()
    got = np.asarray(model(words, lead_ids, time_ids))
    want = _reference_forward(model, words, lead_ids, time_ids)
    real = np.pad(lead_ids != 0, ((0, 0), (model.num_prefix_tokens, 0)), constant_values=True)
    np.testing.assert_allclose(got[real], want[real], atol=2e-4)


def test_blocks_are_stacked_on_a_layer_axis():
    config = dataclasses.replace(TINY, num_layers=3)
    model = ECGFormer(config, rngs=nnx.Rngs(0))
    assert model.blocks.attn.qkv.kernel.shape == (3, 16, 3 * 12)
    assert model.blocks.norm1.scale.shape == (3, 16)
    layer = model.layer(1)
    np.testing.assert_array_equal(layer.mlp.fc1.kernel[...], model.blocks.mlp.fc1.kernel[...][1])
    # Layers are initialised independently.
    kernels = np.asarray(model.blocks.attn.qkv.kernel[...])
    assert np.abs(kernels[0] - kernels[1]).max() > 1e-3


def test_scanned_dropout_matches_unrolled_layers_and_differs_per_layer():
    """Train mode: the scan applies layer i with layer i's own dropout stream, as an unrolled
    loop over standalone copies of each layer (same keys, same counters) does."""
    config = dataclasses.replace(TINY, num_layers=3, dropout_rate=0.3, attention_dropout_rate=0.2)
    model = ECGFormer(config, rngs=nnx.Rngs(0))
    model.train()
    keys = nnx.state(model.blocks, nnx.RngKey)
    for key in jax.tree.leaves(keys):
        data = np.asarray(jax.random.key_data(key)).reshape(3, -1)
        assert len({row.tobytes() for row in data}) == 3  # each layer draws its own masks
    words, lead_ids, time_ids = _batch()
    twin = nnx.clone(model)
    scanned = np.asarray(model(words, lead_ids, time_ids))

    x = twin.embed_words(words) + twin.lead_embed(lead_ids) + twin.time_embed(time_ids)
    x = twin.embed_dropout(x)
    for i in range(config.num_layers):
        x = twin.layer(i)(x, lead_ids != 0)
    unrolled = np.asarray(twin.final_norm(x))
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
    # The counters moved: the next step draws new masks.
    again = np.asarray(model(words, lead_ids, time_ids))
    assert np.abs(again - scanned).max() > 1e-3


def test_released_block_details_are_explicit_fields():
    rope = ECGFormer(TINY, rngs=nnx.Rngs(0))
    assert TINY.qkv_bias and TINY.layer_norm_epsilon == 1e-6 and not TINY.released_init
    assert rope.blocks.attn.qkv.bias is not None
    # Position alone no longer switches the block details (it used to, silently).
    only_position = dataclasses.replace(TINY, position="learned")
    assert only_position.qkv_bias and only_position.layer_norm_epsilon == 1e-6 and not only_position.released_init
    learned_config = dataclasses.replace(TINY, position="learned", **RELEASED_BLOCK)
    assert not learned_config.qkv_bias and learned_config.layer_norm_epsilon == 1e-5
    assert learned_config.released_init
    learned = ECGFormer(learned_config, rngs=nnx.Rngs(0))
    assert learned.blocks.attn.qkv.bias is None and learned.blocks.attn.out.bias is not None
    assert learned.final_norm.epsilon == 1e-5
    # PyTorch's N(0, 1) position table and U(+-1/sqrt(fan_in)) linear layers.
    assert 0.8 < float(np.std(learned.pos_embed[...])) < 1.2
    fc2 = np.asarray(learned.blocks.mlp.fc2.kernel[...])
    assert np.abs(fc2).max() <= 1 / np.sqrt(TINY.mlp_dim) + 1e-6
    explicit = dataclasses.replace(TINY, position="learned", qkv_bias=True, released_init=False)
    assert explicit.qkv_bias and not explicit.released_init


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_more_padding_leaves_real_words_unchanged(position):
    config = dataclasses.replace(TINY, position=position)
    model = ECGFormer(config, rngs=nnx.Rngs(0))
    short = _batch(length=8, num_real=(5, 7))  # both end with >= 1 padding word
    long = _pad_to(short, 12)
    out_short = np.asarray(model(*short))
    out_long = np.asarray(model(*long))
    prefix = model.num_prefix_tokens
    real = short[1] != 0
    np.testing.assert_allclose(out_long[:, prefix : prefix + 8][real], out_short[:, prefix:][real], atol=1e-5)
    if prefix:
        np.testing.assert_allclose(out_long[:, 0], out_short[:, 0], atol=1e-5)


def test_attending_padding_changes_real_words():
    model = ECGFormer(dataclasses.replace(TINY, mask_padding=False), rngs=nnx.Rngs(0))
    short = _batch(length=8, num_real=(5, 7))
    long = _pad_to(short, 12)
    real = short[1] != 0
    diff = np.abs(np.asarray(model(*long))[:, :8][real] - np.asarray(model(*short))[real])
    assert diff.max() > 1e-3


def test_learned_mode_prepends_cls():
    model = ECGFormer(dataclasses.replace(TINY, position="learned"), rngs=nnx.Rngs(0))
    words, lead_ids, time_ids = _batch(length=8)
    assert model.has_cls and model.num_prefix_tokens == 1
    assert model(words, lead_ids, time_ids).shape == (2, 9, TINY.hidden_dim)
    rope = ECGFormer(TINY, rngs=nnx.Rngs(0))
    assert not rope.has_cls and rope.num_prefix_tokens == 0
    assert rope(words, lead_ids, time_ids).shape == (2, 8, TINY.hidden_dim)


def test_embed_words_is_circular_conv_over_sentence():
    model = ECGFormer(TINY, rngs=nnx.Rngs(0))
    words = _batch(length=8)[0]
    emb = np.asarray(model.embed_words(words))
    # Changing word 0 changes words L-1, 0, 1 (circular) and nothing else.
    bumped = words.copy()
    bumped[:, 0] += 1.0
    changed = np.abs(np.asarray(model.embed_words(bumped)) - emb).max(-1) > 1e-6
    assert changed[0].tolist() == [True, True] + [False] * 5 + [True]


def test_bfloat16_compute_keeps_float32_params():
    words, lead_ids, time_ids = _batch()
    f32 = ECGFormer(TINY, rngs=nnx.Rngs(0))
    bf16 = ECGFormer(dataclasses.replace(TINY, dtype="bfloat16"), rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
    out = bf16(words, lead_ids, time_ids)
    assert out.dtype == jnp.float32
    ref = np.asarray(f32(words, lead_ids, time_ids))
    out = np.asarray(out)
    assert np.isfinite(out).all()
    real = lead_ids != 0
    np.testing.assert_allclose(out[real], ref[real], atol=0.1)
    assert np.abs(out[real] - ref[real]).max() > 0  # really ran in bfloat16


def test_dropout_only_in_train_mode():
    words, lead_ids, time_ids = _batch()
    plain = ECGFormer(TINY, rngs=nnx.Rngs(0))
    config = dataclasses.replace(TINY, dropout_rate=0.3, attention_dropout_rate=0.3)
    model = ECGFormer(config, rngs=nnx.Rngs(0))
    model.eval()
    eval_out = np.asarray(model(words, lead_ids, time_ids))
    np.testing.assert_allclose(eval_out, np.asarray(plain(words, lead_ids, time_ids)), atol=1e-6)
    model.train()
    first = np.asarray(model(words, lead_ids, time_ids))
    second = np.asarray(model(words, lead_ids, time_ids))
    assert np.abs(first - eval_out).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3


def test_explicit_attention_path_matches_fused():
    config = dataclasses.replace(TINY, attention_dropout_rate=0.5)
    attn = ECGFormer(config, rngs=nnx.Rngs(0)).layer(0).attn
    attn.eval()  # dropout off: the explicit path must equal the fused one
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 6)), jnp.float32) for _ in range(3))
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
    np.testing.assert_allclose(
        np.asarray(attn._attend_with_dropout(q, k, v, mask)),
        np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask)),
        atol=1e-5,
    )


def test_runs_under_nnx_jit():
    model = ECGFormer(TINY, rngs=nnx.Rngs(0))
    batch = _batch()
    jitted = nnx.jit(lambda m, *b: m(*b))(model, *batch)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(model(*batch)), atol=1e-5)


@pytest.mark.parametrize(
    "field,value",
    [
        ("position", "absolute"),
        ("head_dim", 5),
        ("hidden_dim", 0),
        ("num_layers", -1),
        ("dropout_rate", 1.0),
        ("dtype", "int8"),
        ("layer_norm_epsilon", 0.0),
        ("attention_implementation", "flash"),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_odd_head_dim_allowed_without_rope():
    config = dataclasses.replace(TINY, position="learned", head_dim=5)
    assert config.head_dim == 5


def test_cudnn_path_gives_sequence_lengths_not_a_bias(monkeypatch):
    """The cuDNN branch passes padding as per-sentence lengths (no [B, 1, L, L] bias, so no bias
    gradient) and gives the mask's result at real words; run here through XLA, since cuDNN needs
    a GPU (see the accelerator test below). Gradients too: the backward has no bias to return."""
    calls, lengths = [], []
    real_attention = jax.nn.dot_product_attention

    def fake(q, k, v, bias=None, mask=None, *, query_seq_lengths=None, key_value_seq_lengths=None, implementation=None):
        calls.append((implementation, bias, mask))
        jax.debug.callback(
            lambda *a: lengths.append([np.asarray(x) for x in a]), query_seq_lengths, key_value_seq_lengths
        )
        return real_attention(
            q,
            k,
            v,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            implementation="xla",
        )

    words, lead_ids, time_ids = _batch()
    xla = ECGFormer(dataclasses.replace(TINY, attention_implementation="xla"), rngs=nnx.Rngs(0))
    want = np.asarray(xla(words, lead_ids, time_ids))
    cudnn = ECGFormer(dataclasses.replace(TINY, attention_implementation="cudnn"), rngs=nnx.Rngs(0))
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    got = np.asarray(cudnn(words, lead_ids, time_ids))
    assert calls and all(call == ("cudnn", None, None) for call in calls)
    assert len(lengths) == TINY.num_layers
    for q_lengths, kv_lengths in lengths:
        np.testing.assert_array_equal(q_lengths, [5, 8])
        np.testing.assert_array_equal(kv_lengths, [5, 8])
    real = lead_ids != 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
def test_cudnn_attention_matches_xla_on_gpu():
    config = ECGFormerConfig(
        num_layers=2, hidden_dim=64, mlp_dim=128, num_heads=2, head_dim=64, max_len=64, token_len=96, dtype="bfloat16"
    )
    rng = np.random.default_rng(0)
    words = rng.normal(size=(2, 64, 96)).astype(np.float32)
    lead_ids = np.where(np.arange(64) < np.array([[40], [64]]), 1, 0).astype(np.int32)
    outs = [
        np.asarray(
            ECGFormer(dataclasses.replace(config, attention_implementation=impl), rngs=nnx.Rngs(0))(
                words, lead_ids, lead_ids
            )
        )
        for impl in ("xla", "cudnn")
    ]
    real = lead_ids != 0
    np.testing.assert_allclose(outs[1][real], outs[0][real], atol=0.1)
