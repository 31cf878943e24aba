"""The sweep's grid, per-cell configs, skipping of finished cells and the results table."""

import json

import numpy as np
import pytest

from heartlang_jax.configs import schema as stage_configs
from heartlang_jax.configs import sweep as sweep_config
from heartlang_jax.evaluation import report
from heartlang_jax.stages import finetune, sweep


@pytest.fixture
def config(make_pretrain_run):
    pretrain_dir, _ = make_pretrain_run(num_layers=3, dropout_rate=0.1)
    config = sweep_config.get_config("tiny")
    config.init_workdir = str(pretrain_dir)
    config.tasks = ("superdiagnostic", "rhythm")
    config.label_fractions = (0.1, 1.0)
    config.modes = ("linear",)
    config.seeds = (0, 1)
    return config


def test_grid_and_cell_configs(config, tmp_path):
    grid = sweep.cells(stage_configs.validate(config))
    assert len(grid) == 2 * 2 * 1 * 2 * 2
    assert grid[0].name == "superdiagnostic_10pct_linear_pretrained_seed0"
    assert len({c.name for c in grid}) == len(grid)
    encoder = sweep._random_init_encoder(stage_configs.validate(config))
    pretrained = sweep.cell_config(stage_configs.validate(config), grid[0], "/data/tfds", None)
    random = sweep.cell_config(
        stage_configs.validate(config), sweep.Cell("rhythm", 1.0, "linear", "random", 1), "/data/tfds", encoder
    )
    assert pretrained.init_workdir == str(tmp_path / "pretrain") and pretrained.label_fraction == 0.1
    assert (random.init_workdir, random.task, random.seed, random.stage) == ("", "rhythm", 1, "finetune")
    assert random.encoder.num_layers == 3  # the pre-trained run's architecture, randomly initialized
    assert random.encoder.dropout_rate == config.finetune.encoder.dropout_rate == 0.0  # the sweep's dropout
    assert random.data.tfds_dir == "/data/tfds"


@pytest.mark.parametrize(
    "field,value",
    # Tasks are checked against the dataset's own (test_finetune.py::test_a_task_the_dataset_...).
    [("inits", ("pretrained", "imagenet")), ("modes", ()), ("label_fractions", (0.5, 1.5))],
)
def test_bad_grids_fail_before_running(config, field, value):
    config[field] = value
    with pytest.raises(ValueError, match=rf"\n  {field}(\[\d+\])?: must"):
        stage_configs.validate(config)


def test_pretrained_cells_need_an_init_workdir(config):
    config.init_workdir = ""
    with pytest.raises(ValueError, match="\n  init_workdir: is empty but inits asks for pretrained cells"):
        stage_configs.validate(config)
    config.inits = ("random",)
    assert {c.init for c in sweep.cells(stage_configs.validate(config))} == {"random"}


def _finish(workdir, cell, test_auc):
    path = workdir / sweep.CELLS_DIR / cell.name / finetune.RESULT_FILE
    path.parent.mkdir(parents=True)
    result = {
        "task": cell.task,
        "mode": cell.mode,
        "label_fraction": cell.label_fraction,
        "seed": cell.seed,
        "init": "x",
        "val_auc": test_auc,
        "test_auc": test_auc,
        "best_epoch": 1,
    }
    path.write_text(json.dumps(result))


def test_finished_cells_are_skipped_and_summarized(config, tmp_path, capsys):
    workdir = tmp_path / "sweep"
    grid = sweep.cells(stage_configs.validate(config))
    aucs = {cell: 0.6 + 0.01 * i for i, cell in enumerate(grid)}
    for cell, auc in aucs.items():
        _finish(workdir, cell, auc)
    results = sweep.run(config, workdir)  # every cell finished: nothing trains, no dataset needed
    assert len(results) == len(grid)
    table = capsys.readouterr().out
    assert table == (workdir / "results.md").read_text() + "\n"
    summary = json.loads((workdir / "results.json").read_text())["summary"]
    row = next(s for s in summary if (s["init"], s["task"], s["label_fraction"]) == ("random", "rhythm", 1.0))
    seeds = [aucs[c] for c in grid if (c.init, c.task, c.label_fraction) == ("random", "rhythm", 1.0)]
    assert row["test_auc_mean"] == pytest.approx(np.mean(seeds))
    assert row["test_auc_std"] == pytest.approx(np.std(seeds, ddof=1))
    lines = table.splitlines()
    assert lines[0] == "| setting | super 10% | super 100% | rhythm 10% | rhythm 100% |"
    labels = [line.split(" | ")[0] for line in lines[2:] if line.startswith("|")]
    assert labels == [
        "| **ours: pre-trained, linear**",
        "| paper: HeartLang-Small (Table 1)",
        "| paper: HeartLang-Base (Table 1)",
        "| **ours: random init, linear**",
        "| paper: Random Init-Small (Table 1)",
    ]
    ours = next(line for line in lines if line.startswith("| **ours: random init, linear"))
    assert f"{100 * np.mean(seeds):.2f} ± {100 * np.std(seeds, ddof=1):.2f}" in ours
    paper = next(line for line in lines if line.startswith("| paper: HeartLang-Small"))
    assert paper.split(" | ")[1:] == ["84.23", "87.89", "83.26", "92.36 |"]
    random_paper = next(line for line in lines if line.startswith("| paper: Random Init-Small"))
    assert random_paper.split(" | ")[1:] == ["–", "80.75", "–", "76.95 |"]
    assert "3 layers" in table and "bundled 500-record" in table


def test_missing_settings_say_not_run(config):
    summary = [
        {
            "init": "pretrained",
            "mode": "linear",
            "task": "rhythm",
            "label_fraction": 1.0,
            "seeds": [0],
            "n": 1,
            "test_auc_mean": 0.8,
            "test_auc_std": None,
        }
    ]
    table = report.results_markdown(stage_configs.validate(config), summary)
    ours = next(line for line in table.splitlines() if line.startswith("| **ours: pre-trained, linear"))
    assert ours == "| **ours: pre-trained, linear** | not run | not run | not run | 80.00 |"


def test_results_carry_a_bootstrap_interval_over_the_test_records(config, tmp_path):
    from heartlang_jax.evaluation import metrics

    config.tasks = ("superdiagnostic",)
    config.label_fractions = (1.0,)
    config.seeds = (0, 1, 2)
    workdir = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    labels = (rng.random((66, 5)) < 0.3).astype(np.uint8)
    labels[0], labels[1] = 1, 0
    index = np.arange(66)
    logits = {}
    for cell in sweep.cells(stage_configs.validate(config)):
        if cell.init == "random" and cell.seed == 2:  # finished before cells saved their scores
            _finish(workdir, cell, 0.7)
            continue
        logits[cell] = (rng.normal(size=(66, 5)) + labels * (1.0 if cell.init == "pretrained" else 0.3)).astype(
            np.float32
        )
        _finish(workdir, cell, metrics.macro_auc(labels, logits[cell]))
        finetune.write_test_scores(
            workdir / sweep.CELLS_DIR / cell.name / finetune.TEST_SCORES_FILE,
            index,
            labels,
            logits[cell],
            [f"c{i}" for i in range(5)],
        )
    sweep.run(config, workdir)
    summary = {s["init"]: s for s in json.loads((workdir / "results.json").read_text())["summary"]}
    pretrained, random_init = summary["pretrained"], summary["random"]
    seeds = np.stack([logits[c] for c in sweep.cells(stage_configs.validate(config)) if c.init == "pretrained"])
    assert (pretrained["ci_low"], pretrained["ci_high"]) == pytest.approx(
        metrics.bootstrap_interval(labels, seeds), abs=1e-12
    )
    assert pretrained["num_test_records"] == 66
    assert pretrained["ci_low"] < pretrained["test_auc_mean"] < pretrained["ci_high"]
    # A setting with a seed whose scores were never saved has the std over seeds only.
    assert random_init["ci_low"] is None and random_init["ci_high"] is None and random_init["test_auc_std"] > 0
    table = (workdir / "results.md").read_text()
    ours = next(line for line in table.splitlines() if line.startswith("| **ours: pre-trained, linear"))
    mean, std, low, high = (100 * pretrained[k] for k in ("test_auc_mean", "test_auc_std", "ci_low", "ci_high"))
    assert ours.endswith(f"| {mean:.2f} ± {std:.2f} [{low:.2f}, {high:.2f}] |")
    assert "bootstrap 95% interval over the 66 test records (1000 resamples" in table
