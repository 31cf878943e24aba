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


def test_a_step_saved_before_qkv_was_fused_restores_model_and_optimizer(tmp_path):
    """A checkpoint of the unfused layout (attn.query/key/value, as saved before the fused QKV
    projection) loads into today's model: each fused kernel and bias is Q, K, V side by side."""
    import dataclasses

    import jax
    import optax
    import orbax.checkpoint as ocp
    from test_ecgformer import TINY

    from heartlang_jax.models import ECGFormer

    config = dataclasses.replace(TINY, qkv_bias=True)
    model = ECGFormer(config, rngs=nnx.Rngs(3))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    saved = checkpointing._saveable(nnx.state(model))
    saved_opt = checkpointing._saveable(nnx.state(optimizer))
    inner = config.num_heads * config.head_dim

    def unfuse(tree):  # independent of checkpointing's helpers: plain NumPy slicing
        if not isinstance(tree, dict):
            return tree
        out = {k: unfuse(v) for k, v in tree.items()}
        if "qkv" in out:
            fused = out.pop("qkv")
            for i, name in enumerate(("query", "key", "value")):
                out[name] = {p: np.asarray(a)[..., i * inner : (i + 1) * inner] for p, a in fused.items()}
        return out

    directory = tmp_path / checkpointing.CHECKPOINT_DIR
    manager = ocp.CheckpointManager(directory, item_names=("model", "optimizer", "data", "meta"))
    manager.save(
        5,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(unfuse(saved)),
            optimizer=ocp.args.StandardSave(unfuse(saved_opt)),
            data=ocp.args.JsonSave({}),
            meta=ocp.args.JsonSave({"step": 5}),
        ),
    )
    manager.wait_until_finished()
    manager.close()
    assert "query" in unfuse(saved)["blocks"]["attn"] and "qkv" not in unfuse(saved)["blocks"]["attn"]

    fresh = ECGFormer(config, rngs=nnx.Rngs(4))
    fresh_opt = nnx.Optimizer(fresh, optax.adam(1e-3), wrt=nnx.Param)
    checkpointing.check_fits(tmp_path, 5, fresh, "test")  # the stored shapes fit once fused
    store = checkpointing.RunCheckpoints(tmp_path, read_only=True)
    _, meta = store.restore(5, fresh, fresh_opt)
    store.close()
    assert meta["step"] == 5
    for want, got in (
        (saved, checkpointing._saveable(nnx.state(fresh))),
        (saved_opt, checkpointing._saveable(nnx.state(fresh_opt))),
    ):
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert fresh.blocks.attn.qkv.kernel.shape[-1] == 3 * inner
