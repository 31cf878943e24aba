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


# ------------------------------------------------------------------- per-class figures
#
# What a clinical reader asks of each class beside its AUC: the area under the precision-recall
# curve (informative when positives are rare), and F1, sensitivity and specificity at one
# decision threshold per class. The thresholds are chosen on the validation split
# (`choose_thresholds`) and applied unchanged to the test split.

THRESHOLD_RULE = (
    "max F1 on the validation split (probability >= threshold is positive; ties: the highest threshold); "
    "0.5 for a class without a positive or a negative there"
)
DEFAULT_THRESHOLD = 0.5


def per_class_average_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision (area under the step precision-recall curve) of every class [C]:
    sum over the distinct score thresholds, from high to low, of (recall gained) x precision,
    as scikit-learn's `average_precision_score`; NaN where a class has no positive."""
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels and scores must both be [N, C], got {labels.shape} and {scores.shape}")
    out = np.full(labels.shape[1], np.nan)
    for c in range(labels.shape[1]):
        positives = int(labels[:, c].sum())
        if positives == 0:
            continue
        tp, fp = _counts_at_thresholds(labels[:, c], scores[:, c])[1:3]
        recall = tp / positives
        precision = tp / (tp + fp)
        out[c] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return out


def _counts_at_thresholds(positive: np.ndarray, scores: np.ndarray):
    """For each distinct score t, from the highest down: (t, true positives, false positives) of
    calling `scores >= t` positive."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(positive[order])[last].astype(np.float64)
    fp = (last + 1) - tp
    return sorted_scores[last], tp, fp


def choose_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One decision threshold per class [C], by `THRESHOLD_RULE`: of the candidate thresholds
    (the distinct probabilities of the split), the one whose `probability >= threshold` gives the
    highest F1; among equal F1s the highest threshold (fewest positive calls). A class with no
    positive or no negative in the split keeps `DEFAULT_THRESHOLD`."""
    labels = np.asarray(labels) > 0.5
    probabilities = np.asarray(probabilities, np.float64)
    thresholds = np.full(labels.shape[1], DEFAULT_THRESHOLD)
    for c in range(labels.shape[1]):
        positives = int(labels[:, c].sum())
        if positives == 0 or positives == len(labels):
            continue
        candidates, tp, fp = _counts_at_thresholds(labels[:, c], probabilities[:, c])
        f1 = 2 * tp / (tp + fp + positives)  # 2TP / (2TP + FP + FN), FN = positives - TP
        thresholds[c] = candidates[int(np.argmax(f1))]  # argmax: the first (highest) of equal F1s
    return thresholds


def per_class_metrics(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    """{class: {auroc, auprc, f1, sensitivity, specificity, threshold, positives}} of one split.

    AUROC and AUPRC from the probabilities; F1, sensitivity (TP / positives) and specificity
    (TN / negatives) from `probability >= threshold`. A figure a class cannot have in this split
    (AUROC without a positive or a negative, sensitivity without a positive, ...) is None."""
    labels = np.asarray(labels) > 0.5
    probabilities = np.asarray(probabilities, np.float64)
    auroc = per_class_auc(labels, probabilities)
    auprc = per_class_average_precision(labels, probabilities)
    calls = probabilities >= np.asarray(thresholds, np.float64)[None, :]

    def ratio(num: float, den: float) -> float | None:
        return float(num / den) if den > 0 else None

    out: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(class_names):
        positive, called = labels[:, c], calls[:, c]
        tp = float(np.sum(positive & called))
        fp = float(np.sum(~positive & called))
        fn = float(np.sum(positive & ~called))
        tn = float(np.sum(~positive & ~called))
        out[str(name)] = {
            "auroc": None if np.isnan(auroc[c]) else float(auroc[c]),
            "auprc": None if np.isnan(auprc[c]) else float(auprc[c]),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "threshold": float(thresholds[c]),
            "positives": int(tp + fn),
        }
    return out
