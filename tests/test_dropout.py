"""Byte-mask dropout: the applied rate, the scaling, odd shapes and the train/eval switch."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from heartlang_jax.models.dropout import Dropout, quantized_rate


@pytest.mark.parametrize("rate, shape", [(0.1, (64, 257, 96)), (0.5, (8, 3, 1023)), (0.3, (5000, 7))])
def test_drop_fraction_and_scale(rate, shape):
    layer = Dropout(rate, rngs=nnx.Rngs(dropout=1))
    x = jnp.ones(shape, jnp.float32)
    out = np.asarray(layer(x))
    assert out.shape == shape
    applied = quantized_rate(rate)
    assert abs(applied - rate) <= 1 / 512
    dropped = out == 0
    # Binomial standard error on >= 35k draws is < 0.003.
    assert abs(dropped.mean() - applied) < 0.01, (dropped.mean(), applied)
    np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - applied), rtol=1e-6)
    # Every byte lane of a 32-bit draw is used, not one lane repeated: columns decorrelated.
    assert 0 < dropped[..., 0].mean() < 1 and (dropped[..., 0] != dropped[..., 1]).any()


def test_eval_mode_and_zero_rate_are_identity():
    x = jnp.arange(24.0).reshape(2, 12)
    layer = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    layer.eval()
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(Dropout(0.001, rngs=nnx.Rngs(0))(x)), np.asarray(x))


def test_new_mask_each_call_and_bf16_kept():
    layer = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((16, 64), jnp.bfloat16)
    first, second = layer(x), layer(x)
    assert first.dtype == jnp.bfloat16
    assert (np.asarray(first) != np.asarray(second)).any()
