"""macro_auc against scikit-learn, including ties and classes that a split lacks."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from heartlang_jax import metrics


def _labels(rng, n, c, p=0.3):
    labels = (rng.random((n, c)) < p).astype(np.uint8)
    labels[0], labels[1] = 1, 0  # every class has a positive and a negative
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_continuous_scores(seed):
    rng = np.random.default_rng(seed)
    labels = _labels(rng, 200, 7)
    scores = rng.normal(size=(200, 7)) + labels
    expected = roc_auc_score(labels, scores, average="macro")
    assert metrics.macro_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    labels = _labels(rng, 300, 5)
    scores = np.round(rng.normal(size=(300, 5)) + labels, 0)  # a handful of distinct values: many ties
    scores[:, 4] = 0.5  # a constant score: AUC exactly 0.5
    expected = roc_auc_score(labels, scores, average="macro")
    assert metrics.macro_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(
        metrics.per_class_auc(labels, scores), roc_auc_score(labels, scores, average=None), atol=1e-12
    )
    assert metrics.per_class_auc(labels, scores)[4] == 0.5


def test_perfect_and_reversed_scores():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    assert metrics.macro_auc(labels, labels.astype(float)) == 1.0
    assert metrics.macro_auc(labels, -labels.astype(float)) == 0.0


def test_classes_without_positives_or_negatives_are_left_out():
    rng = np.random.default_rng(4)
    labels = _labels(rng, 50, 4)
    labels[:, 1] = 0  # no positive
    labels[:, 3] = 1  # no negative
    scores = rng.normal(size=(50, 4))
    kept = [0, 2]
    expected = roc_auc_score(labels[:, kept], scores[:, kept], average="macro")
    with pytest.warns(RuntimeWarning, match="over 50 examples leaves out 2 of 4 classes .*: MI, CD"):
        value = metrics.macro_auc(labels, scores, class_names=["NORM", "MI", "STTC", "CD"])
    assert value == pytest.approx(expected, abs=1e-12)
    assert np.isnan(metrics.per_class_auc(labels, scores)[[1, 3]]).all()


def test_a_split_scored_every_epoch_warns_once():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            metrics.macro_auc(labels, np.arange(6.0).reshape(3, 2))
    assert len(caught) == 1


def test_no_scorable_class_gives_nan():
    labels = np.zeros((6, 2))
    with pytest.warns(RuntimeWarning, match="leaves out 2 of 2"):
        assert np.isnan(metrics.macro_auc(labels, np.zeros((6, 2))))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        metrics.macro_auc(np.zeros((4, 2)), np.zeros((4, 3)))
