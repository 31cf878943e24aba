"""The TPU attention path (Pallas splash kernel, padding as segment ids) against XLA's, on CPU in
Pallas interpret mode, and its lowering for TPU (a Mosaic custom call) from this machine."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.models import splash
from heartlang_jax.models.ecgformer import ECGFormer, ECGFormerConfig, attention_kernel

CONFIG = ECGFormerConfig(num_layers=2, hidden_dim=16, mlp_dim=24, num_heads=2, head_dim=8, token_len=10, max_len=128)


def _batch():
    rng = np.random.default_rng(0)
    words = rng.normal(size=(2, 128, 10)).astype(np.float32)
    lead_ids = np.where(np.arange(128) < np.array([[70], [128]]), 1, 0).astype(np.int32)
    time_ids = (np.arange(128)[None].repeat(2, 0) % 5).astype(np.int32)
    return words, lead_ids, time_ids


def test_auto_picks_splash_on_tpu_when_the_length_tiles():
    assert attention_kernel(CONFIG, "tpu") == "splash"
    assert attention_kernel(dataclasses.replace(CONFIG, max_len=96), "tpu") == "xla"
    assert attention_kernel(dataclasses.replace(CONFIG, max_len=256), "tpu") == "splash"
    assert attention_kernel(dataclasses.replace(CONFIG, max_len=256, position="learned"), "tpu") == "xla"  # 257
    assert attention_kernel(CONFIG, "cpu") == "xla"
    assert attention_kernel(dataclasses.replace(CONFIG, dtype="bfloat16"), "gpu") == "cudnn"


@pytest.mark.slow  # Pallas interpret mode on CPU
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_splash_encoder_matches_xla_forward_and_gradients(dtype):
    words, lead_ids, time_ids = _batch()
    config = dataclasses.replace(CONFIG, dtype=dtype)

    def run(implementation):
        model = ECGFormer(dataclasses.replace(config, attention_implementation=implementation), rngs=nnx.Rngs(0))
        real = jnp.asarray(lead_ids != 0)[..., None]

        def loss(model):
            out = model(words, lead_ids, time_ids)
            return jnp.sum(jnp.where(real, jnp.sin(out), 0.0)), out

        (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return np.asarray(out), jax.tree.leaves(nnx.to_pure_dict(grads))

    xla_out, xla_grads = run("xla")
    splash_out, splash_grads = run("splash")
    real = lead_ids != 0
    atol = 1e-5 if dtype == "float32" else 5e-2
    np.testing.assert_allclose(splash_out[real], xla_out[real], atol=atol)
    for a, b in zip(xla_grads, splash_grads):
        scale = max(float(np.abs(a).max()), 1.0)
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), atol=atol * scale)


def test_splash_lowers_to_a_tpu_kernel(monkeypatch):
    monkeypatch.setattr(splash, "INTERPRET", False)
    shape = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)
    mask = jax.ShapeDtypeStruct((2, 256), jnp.bool_)

    def loss(q, k, v, mask):
        return jnp.sum(splash.splash_attention(q, k, v, mask).astype(jnp.float32))

    text = (
        jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        .trace(shape, shape, shape, mask)
        .lower(lowering_platforms=("tpu",))
        .as_text()
    )
    assert "tpu_custom_call" in text
    # No score matrix outside the kernel (its softmax statistics come out lane-padded, [B, N, L, 128]).
    assert "2x2x256x256" not in text
