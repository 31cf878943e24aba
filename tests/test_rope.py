"""RoPE against the paper's formula (§2.2.3) computed independently in NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from heartlang_jax.models.rope import apply_rope


def _paper_rope(x: np.ndarray, positions: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """Float64 loop over the printed formula; x [B, L, N, H], positions [L]."""
    out = np.zeros_like(x, dtype=np.float64)
    head_dim = x.shape[-1]
    for li, i in enumerate(positions):
        for j in range(head_dim // 2):
            theta = i / base ** (2 * j / head_dim)
            even, odd = x[:, li, :, 2 * j], x[:, li, :, 2 * j + 1]
            out[:, li, :, 2 * j] = even * np.cos(theta) + odd * np.sin(theta)
            out[:, li, :, 2 * j + 1] = -even * np.sin(theta) + odd * np.cos(theta)
    return out


def test_matches_paper_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, 8))
    positions = np.arange(7)
    got = np.asarray(apply_rope(x.astype(np.float32), positions))
    np.testing.assert_allclose(got, _paper_rope(x, positions), atol=1e-5)


def test_golden_value_single_pair():
    # H=2: one pair rotated by theta = i. x = (1, 0) at i=1 -> (cos 1, -sin 1).
    x = np.zeros((1, 2, 1, 2), np.float32)
    x[..., 0] = 1.0
    got = np.asarray(apply_rope(x, np.arange(2)))
    np.testing.assert_allclose(got[0, 1, 0], [np.cos(1.0), -np.sin(1.0)], atol=1e-6)
    np.testing.assert_allclose(got[0, 0, 0], [1.0, 0.0], atol=1e-7)


def test_position_zero_is_identity():
    x = np.random.default_rng(1).normal(size=(2, 4, 2, 6)).astype(np.float32)
    got = np.asarray(apply_rope(x, np.zeros((2, 4), np.int32)))
    np.testing.assert_allclose(got, x, atol=1e-7)


@pytest.mark.parametrize("shift", [0, 1, 5, 37])
def test_score_depends_only_on_relative_position(shift):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)

    def score(i, j):
        qi = np.asarray(apply_rope(q, np.array([i])), np.float64)
        kj = np.asarray(apply_rope(k, np.array([j])), np.float64)
        return float(np.sum(qi * kj))

    reference = score(3, 1)  # i - j = 2
    assert score(3 + shift, 1 + shift) == pytest.approx(reference, abs=1e-4)
    # A different offset gives a different score, so the check is not vacuous.
    assert abs(score(4 + shift, 1 + shift) - reference) > 1e-3


def test_keeps_dtype():
    x = jnp.ones((1, 3, 1, 4), jnp.bfloat16)
    out = apply_rope(x, np.arange(3))
    assert out.dtype == jnp.bfloat16
