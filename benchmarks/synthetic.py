"""Synthetic PTB-XL-shaped sentences for the throughput benchmarks (numpy only: the released-code
benchmark imports it from a torch interpreter that has no JAX)."""

from __future__ import annotations

import numpy as np

REAL_WORDS = 144  # 12 leads x ~12 beats in 10 s


def synthetic_batch(batch: int, max_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`batch` sentences of `max_len` words of 96 samples: the first REAL_WORDS real, the rest padding."""
    rng = np.random.default_rng(seed)
    real = np.arange(max_len) < REAL_WORDS
    return {
        "words": (rng.standard_normal((batch, max_len, 96)) * real[:, None]).astype(np.float32),
        "lead_ids": np.where(real, np.arange(max_len) // 12 % 12 + 1, 0).astype(np.int32)[None].repeat(batch, 0),
        "time_ids": np.where(real, np.arange(max_len) % 10 + 1, 0).astype(np.int32)[None].repeat(batch, 0),
        "targets": rng.integers(0, vocab, (batch, max_len)).astype(np.int32),
    }
