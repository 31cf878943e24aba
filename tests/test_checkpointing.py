"""RunCheckpoints keeps what fine-tuning restores: the newest step and the best-scoring one."""

import numpy as np
from flax import nnx

from heartlang_jax.training import checkpointing


class _Tiny(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(np.zeros(3, np.float32))


def _save_scores(workdir, scores):
    store = checkpointing.RunCheckpoints(workdir, max_to_keep=1, best_metric="eval_auc")
    model = _Tiny()
    for step, score in enumerate(scores, start=1):
        model.w[...] = np.full(3, step, np.float32)
        store.save(step, model, None, {}, {}, metrics={"eval_auc": score})
    store.close()
    return checkpointing.RunCheckpoints(workdir, read_only=True)


def test_of_equal_best_scores_the_earliest_step_is_kept(tmp_path):
    # A new best is recorded only when strictly better (finetune._record_best), so the step kept
    # must be the first of a tie: Orbax's BestN alone keeps the last one.
    store = _save_scores(tmp_path, [0.5, 0.7, 0.7, 0.6])
    assert store.steps() == [2, 4]
    model = _Tiny()
    store.restore(2, model, None)
    np.testing.assert_array_equal(np.asarray(model.w[...]), np.full(3, 2.0))
    store.close()


def test_a_nan_score_ranks_below_every_finite_one(tmp_path):
    store = _save_scores(tmp_path, [0.6, float("nan"), 0.55])
    assert store.steps() == [1, 3]
    store.close()
