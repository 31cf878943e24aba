"""Macro ROC AUC, the PTB-XL benchmark's metric, in plain NumPy.

A class's AUC is the Mann-Whitney U statistic of its scores: the probability that a random
positive outscores a random negative, ties counting one half. Ranks with ties averaged give it
exactly (same numbers as sklearn's `roc_auc_score`), without needing sklearn at run time.
A class with no positive or no negative example in a split has no AUC; it is left out of the
macro average (as the small bundled sample's validation and test splits need) and named in a
`warnings.warn`, which shows each distinct message once: a split evaluated every epoch warns
once, not once per epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` [N]; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    _, inverse, counts = np.unique(x[order], return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    ranks = np.empty(len(x), np.float64)
    ranks[order] = (first + (counts + 1) / 2.0)[inverse]
    return ranks


def per_class_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of every class [C]; NaN where the class lacks positives or negatives."""
    labels = np.asarray(labels) > 0.5  # [N, C]
    scores = np.asarray(scores, np.float64)  # [N, C]
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels and scores must both be [N, C], got {labels.shape} and {scores.shape}")
    aucs = np.full(labels.shape[1], np.nan)
    for c in range(labels.shape[1]):
        positives = int(labels[:, c].sum())
        negatives = len(labels) - positives
        if positives == 0 or negatives == 0:
            continue
        rank_sum = _average_ranks(scores[:, c])[labels[:, c]].sum()
        aucs[c] = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    return aucs


def macro_auc(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str] | None = None) -> float:
    """Mean AUC over the classes that have both positives and negatives; NaN if none has.

    labels [N, C] multi-hot, scores [N, C] any monotone score (logits or probabilities).
    """
    aucs = per_class_auc(labels, scores)
    missing = np.flatnonzero(np.isnan(aucs))
    if len(missing):
        names = [class_names[i] if class_names is not None else str(i) for i in missing]
        warnings.warn(
            f"macro AUC over {len(labels)} examples leaves out {len(missing)} of {len(aucs)} classes "
            f"with no positive or no negative example among them: {', '.join(names)}",
            RuntimeWarning,
            stacklevel=2,
        )
    if len(missing) == len(aucs):
        return float("nan")
    return float(np.nanmean(aucs))
