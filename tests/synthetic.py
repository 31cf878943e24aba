"""Small in-memory ECG-sentence sources shaped like the `ptbxl` dataset (for fast loop tests)."""

from __future__ import annotations

import numpy as np

from heartlang_jax.ecg.records import STANDARD_LEADS
from heartlang_jax.stages.common import DatasetInfo

TASK_DIMS = {"superdiagnostic": 5, "subdiagnostic": 23, "form": 19, "rhythm": 12}


def sentences(n: int, seed: int = 0, max_len: int = 256, token_len: int = 96) -> list[dict]:
    """Beat-like words (a few sinusoid families) with real lead/time ids and random labels."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, token_len)
    out = []
    for _ in range(n):
        count = int(rng.integers(20, 60))
        lead = np.zeros(max_len, np.uint8)
        lead[:count] = np.sort(rng.integers(1, 13, count))
        time = np.zeros(max_len, np.uint8)
        time[:count] = rng.integers(1, 11, count)
        words = np.zeros((max_len, token_len), np.float16)
        freq = rng.choice([1.0, 2.0, 3.0], size=(count, 1))
        words[:count] = (np.sin(2 * np.pi * freq * t) * rng.uniform(0.5, 1.5, (count, 1))).astype(np.float16)
        example = {"words": words, "lead_ids": lead, "time_ids": time, "num_words": np.int32(count)}
        for task, dim in TASK_DIMS.items():
            example[task] = (rng.random(dim) < 0.3).astype(np.uint8)
        out.append(example)
    return out


# What a stage records about the synthetic "dataset" in its run folder's model.json.
DATASET = DatasetInfo(
    name="synthetic",
    sentence={"leads": list(STANDARD_LEADS), "max_len": 256, "token_len": 96, "fs": 100, "detector": "multilead"},
    amplitude={"mean": 0.0, "std": 1.0},
)
