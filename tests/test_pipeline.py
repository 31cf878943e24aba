"""The whole pipeline, a few steps per stage, on the bundled sample; then a rerun that trains nothing."""

import json
import math

import pytest

from heartlang_jax.configs import pipeline as pipeline_config
from heartlang_jax.evaluation import report
from heartlang_jax.stages import pipeline, sweep


def tiny_pipeline_config(tfds_dir):
    config = pipeline_config.get_config("demo")
    config.data.tfds_dir = str(tfds_dir)
    config.vqhbr.num_train_steps = 2
    config.vqhbr.model.kmeans_iters = 2
    config.pretrain.num_train_steps = 2
    config.sweep.tasks = ("superdiagnostic",)
    config.sweep.seeds = (0,)
    config.sweep.finetune.num_train_steps = 3
    for stage in (config.vqhbr, config.pretrain, config.sweep.finetune):
        stage.batch_size = 16
    for encoder in (config.vqhbr.model.encoder, config.vqhbr.model.decoder, config.pretrain.model.encoder):
        encoder.update(num_layers=1, hidden_dim=32, mlp_dim=32, num_heads=2, head_dim=16)
    return config


@pytest.mark.slow
def test_pipeline_end_to_end_then_rerun_trains_nothing(bundled_tfds_dir, tmp_path, capsys):
    config = tiny_pipeline_config(bundled_tfds_dir)
    table = pipeline.run(config, tmp_path)
    out = capsys.readouterr().out
    assert table in out and "tensorboard --logdir" in out
    assert "| **ours: pre-trained, linear** |" in table and "| **ours: random init, linear** |" in table
    results = json.loads((tmp_path / "sweep" / report.RESULTS_JSON).read_text())["cells"]
    assert {r["init_kind"] for r in results} == {"pretrained", "random"}
    for r in results:
        assert 0.0 <= r["val_auc"] <= 1.0 and 0.0 <= r["test_auc"] <= 1.0 and math.isfinite(r["test_auc"])
    pretrained = next(r for r in results if r["init_kind"] == "pretrained")
    assert pretrained["init"] == str(tmp_path / "pretrain")
    for stage in ("vqhbr", "pretrain"):
        assert [p.name for p in (tmp_path / stage / "checkpoints").iterdir()] == ["2"]
    assert not (tmp_path / "sweep" / sweep.CELLS_DIR / results[0]["cell"] / "checkpoints").exists()

    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "checkpoints" in p.parts}
    assert pipeline.run(config, tmp_path) == table  # every stage finished, every cell skipped
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "checkpoints" in p.parts} == files


def test_a_bad_sweep_grid_fails_before_any_stage_runs(tmp_path):
    config = pipeline_config.get_config("demo")
    config.sweep.tasks = ("superdiagnostic", "rhythms")
    with pytest.raises(ValueError, match=r"sweep.tasks\[1\]: must be one of the tasks of ptbxl"):
        pipeline.run(config, tmp_path)
    assert list(tmp_path.iterdir()) == []
