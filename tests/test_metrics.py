"""macro_auc against scikit-learn, including ties and classes that a split lacks."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from heartlang_jax.evaluation import metrics


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


# ------------------------------------------------------------------- bootstrap interval


def _explicit_bootstrap(labels, runs, indices):
    """The slow, plain way: materialize each resample and score it with scikit-learn, class by
    class, leaving out classes without a positive or a negative; average the runs."""
    values = []
    for rows in indices:
        y = labels[rows]
        present = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(rows)]
        if not present:
            values.append(np.nan)
            continue
        values.append(np.mean([np.mean([roc_auc_score(y[:, c], run[rows, c]) for c in present]) for run in runs]))
    return np.asarray(values)


def test_bootstrap_matches_explicit_resampling_with_ties_rare_classes_and_seeds():
    rng = np.random.default_rng(4)
    labels = (rng.random((66, 5)) < 0.25).astype(np.uint8)
    labels[:, 3] = 0
    labels[[5, 40], 3] = 1  # two positives: absent from some resamples, left out there
    runs = rng.normal(size=(3, 66, 5)) + labels  # three seeds
    runs[1] = np.round(runs[1])  # many ties
    indices = metrics.bootstrap_indices(66, 300, seed=0)
    expected = _explicit_bootstrap(labels, runs, indices)
    assert np.mean([0 < labels[rows, 3].sum() < 66 for rows in indices]) < 0.9  # the rare class does go missing
    np.testing.assert_allclose(metrics.bootstrap_macro_auc(labels, runs, indices), expected, rtol=0, atol=1e-12)
    low, high = metrics.bootstrap_interval(labels, runs, num_resamples=300, seed=0)
    assert (low, high) == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])), abs=1e-12)
    # The interval is about the mean of the seeds' macro AUCs.
    mean = np.mean([metrics.macro_auc(labels, run) for run in runs])
    assert low < mean < high


def test_bootstrap_interval_of_known_cases():
    rng = np.random.default_rng(5)
    labels = (rng.random((40, 3)) < 0.5).astype(np.uint8)
    labels[0], labels[1] = 1, 0
    # Scores that separate every class perfectly do so on every resample; constant ones never do.
    assert metrics.bootstrap_interval(labels, labels + 0.1 * rng.random((40, 3))) == (1.0, 1.0)
    assert metrics.bootstrap_interval(labels, np.zeros((40, 3))) == (0.5, 0.5)
    # No class can be scored: no interval.
    assert np.isnan(metrics.bootstrap_interval(np.ones((10, 2)), rng.random((10, 2)))).all()
    # Same seed, same interval; the default is 1000 resamples.
    scores = rng.normal(size=(40, 3)) + labels
    assert metrics.bootstrap_interval(labels, scores) == metrics.bootstrap_interval(labels, scores[None])
    assert metrics.bootstrap_indices(40).shape == (1000, 40)


def test_bootstrap_width_shrinks_like_one_over_root_n():
    """On more records from the same population the interval narrows about as 1/sqrt(n), and it
    holds the population AUC (here Phi(1/sqrt(2)) = 0.760 for unit normals one apart)."""
    rng = np.random.default_rng(6)
    widths = []
    for n in (100, 1600):
        labels = (rng.random((n, 1)) < 0.5).astype(np.uint8)
        scores = rng.normal(size=(n, 1)) + labels
        low, high = metrics.bootstrap_interval(labels, scores)
        assert low < 0.7602 < high
        widths.append(high - low)
    assert 3.0 < widths[0] / widths[1] < 5.5  # sqrt(16) = 4
