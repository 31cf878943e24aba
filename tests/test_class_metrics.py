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


def _finetune_config(pos_weight: str):
    from heartlang_jax.configs import finetune as finetune_config
    from heartlang_jax.configs import schema

    config = finetune_config.get_config("tiny")
    config.model.pos_weight = pos_weight
    return schema.validate(config)


def _numpy_weighted_bce(logits, labels, weights):
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    p = 1 / (1 + np.exp(-x))
    return np.mean(-(weights[None, :] * y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_balanced_pos_weight_bce_matches_numpy_float64():
    import jax.numpy as jnp

    from heartlang_jax.models import classifier_bce_loss
    from heartlang_jax.stages import finetune

    labels, _ = _scores(5, n=64, classes=4)
    labels[:, 3] = 0  # a class with no training positive: weight 1
    weights = finetune.pos_weights(_finetune_config("balanced"), labels, ["a", "b", "c", "d"])
    n_pos = labels.sum(axis=0)
    np.testing.assert_allclose(weights[:3], (64 - n_pos[:3]) / n_pos[:3], rtol=1e-6)
    assert weights[3] == 1.0
    logits = np.random.default_rng(6).normal(scale=3, size=labels.shape).astype(np.float32)
    rows = np.broadcast_to(weights, labels.shape)  # as the training batches carry it
    got = float(classifier_bce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(rows)))
    assert got == pytest.approx(_numpy_weighted_bce(logits, labels, weights.astype(np.float64)), rel=1e-5)
    # "none" is today's loss exactly; unit weights give the same number
    plain = float(classifier_bce_loss(jnp.asarray(logits), jnp.asarray(labels)))
    ones = float(classifier_bce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(4)))
    assert plain == pytest.approx(ones, rel=1e-6)
    assert finetune.pos_weights(_finetune_config("none"), labels, list("abcd")) is None


def test_pos_weight_list_is_checked_against_the_classes():
    from heartlang_jax.errors import ConfigError
    from heartlang_jax.stages import finetune

    weights = finetune.pos_weights(_finetune_config("1,2.5,4"), None, ["a", "b", "c"])
    np.testing.assert_array_equal(weights, np.float32([1, 2.5, 4]))
    with pytest.raises(ConfigError, match=r"pos_weight has 3 weights, task superdiagnostic has 5 classes") as e:
        finetune.pos_weights(_finetune_config("1,2.5,4"), None, ["NORM", "MI", "STTC", "CD", "HYP"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"model.pos_weight: must be 'none', 'balanced' or positive weights"):
        _finetune_config("balance")


def test_results_table_lists_per_class_means_over_seeds():
    from heartlang_jax.evaluation import report

    def cell(seed, auroc, f1):
        figures = {"auroc": auroc, "auprc": 0.5, "f1": f1, "sensitivity": 1.0, "specificity": None, "threshold": 0.4}
        return {
            "init_kind": "random", "mode": "linear", "task": "classes", "label_fraction": 1.0, "seed": seed,
            "test_auc": auroc, "per_class": {"test": {"AF": {**figures, "positives": 3}}},
        }  # fmt: skip

    (summary,) = report.summarize([cell(0, 0.8, 0.5), cell(1, 0.6, None)])
    af = summary["per_class"]["AF"]
    assert af["auroc"] == pytest.approx(0.7) and af["f1"] == 0.5 and af["specificity"] is None
    table = report.per_class_markdown([summary])
    assert "| AF | 3 | 0.700 | 0.500 | 0.500 | 1.000 | n/a | 0.400 |" in table
    old = {**cell(2, 0.7, 0.5)}
    del old["per_class"]  # a cell finished before per-class figures: no per-class table
    assert report.summarize([old])[0]["per_class"] is None
