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
        names = [class_names[int(i)] if class_names is not None else str(i) for i in missing]
        warnings.warn(
            f"macro AUC over {len(labels)} examples leaves out {len(missing)} of {len(aucs)} classes "
            f"with no positive or no negative example among them: {', '.join(names)}",
            RuntimeWarning,
            stacklevel=2,
        )
    if len(missing) == len(aucs):
        return float("nan")
    return float(np.nanmean(aucs))


# ------------------------------------------------------------------- bootstrap interval
#
# The test split is a sample of records: a macro AUC measured on another draw of records from the
# same population would differ, and on a small split (the bundled sample's 66 test records) by
# more than from seed to seed. Resampling the test records with replacement estimates that
# spread. Each resample is stored as how many times it draws every record, so the AUC of a
# resample is a weighted Mann-Whitney statistic computed with cumulative sums, for all resamples
# at once, instead of a rank sort per resample and class.


def bootstrap_indices(num_records: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[num_resamples, num_records] record indices drawn with replacement (fixed RNG seed)."""
    return np.random.default_rng(seed).integers(0, num_records, size=(num_resamples, num_records))


def _draw_counts(indices: np.ndarray) -> np.ndarray:
    """[B, N] how many times each resample draws each record."""
    num_resamples, n = indices.shape
    flat = indices + n * np.arange(num_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=num_resamples * n).reshape(num_resamples, n).astype(np.float64)


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC [B] of one class's scores [N] when record i counts counts[b, i] times; NaN where a
    resample has no positive or no negative. Ties count one half, as in `per_class_auc`."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    weights = counts[:, order]  # [B, N]
    pos = np.add.reduceat(weights * positive[order], starts, axis=1)  # [B, G]
    neg = np.add.reduceat(weights * ~positive[order], starts, axis=1)  # [B, G]
    neg_below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
    wins = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def bootstrap_macro_auc(labels: np.ndarray, scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Macro AUC [B] of each resample of the records, averaged over the runs of `scores`.

    labels [N, C] multi-hot; scores [N, C] or [S, N, C] (S runs, e.g. seeds, scored on the same
    records); indices [B, N] (`bootstrap_indices`). Every run is scored on the same resample and
    their macro AUCs averaged, so the values scatter around the mean over runs of their test
    macro AUCs. A class with no positive or no negative in a resample is left out of its macro
    average (as `macro_auc` does); a resample where every class is left out is NaN.
    """
    positive = np.asarray(labels) > 0.5
    scores = np.asarray(scores, np.float64)
    scores = scores[None] if scores.ndim == 2 else scores
    if scores.shape[1:] != positive.shape or positive.ndim != 2:
        raise ValueError(f"scores {scores.shape} do not match labels {positive.shape}")
    counts = _draw_counts(np.asarray(indices))
    aucs = np.stack(
        [
            np.stack([_weighted_auc(positive[:, c], run[:, c], counts) for c in range(positive.shape[1])], axis=1)
            for run in scores
        ]
    )  # [S, B, C]
    present = ~np.isnan(aucs[0])  # the same records, so the same classes, in every run
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.nansum(aucs, axis=2) / present.sum(axis=1)  # [S, B]
    return macro.mean(axis=0)


def bootstrap_interval(
    labels: np.ndarray, scores: np.ndarray, *, level: float = 0.95, num_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the macro AUC over the records; see
    `bootstrap_macro_auc` for `scores` of several runs. NaN, NaN when no resample has an AUC."""
    values = bootstrap_macro_auc(labels, scores, bootstrap_indices(len(labels), num_resamples, seed))
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
