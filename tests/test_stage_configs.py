"""Typed stage configs: every shipped config passes; a typo, a wrong type or a bad value is named
in one line before any compute."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from heartlang_jax import configs, stages
from heartlang_jax.configs import schema as stage_configs

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every config file and its variants (`--config=configs/<name>.py:<variant>`).
SHIPPED = {
    "dataset": (None,),
    "vqhbr": ("", "tiny", "released"),
    "pretrain_small": ("", "tiny"),
    "pretrain_base": ("", "tiny", "released"),
    "pretrain_large": ("", "tiny"),
    "finetune": ("", "tiny", "released"),
    "sweep": ("", "tiny", "released"),
    "pipeline": ("", "demo", "released"),
}


def _config(name: str, variant: str | None = "") -> ml_collections.ConfigDict:
    module = importlib.import_module(f"heartlang_jax.configs.{name}")
    return module.get_config() if variant is None else module.get_config(variant)


def _edited(name: str, variant: str, edits: dict) -> ml_collections.ConfigDict:
    """The config with `edits` ({dotted path: value, or None to delete}) applied to its plain dict,
    as a user's own config file would build it (ConfigDict refuses wrong types on assignment)."""
    tree = _config(name, variant).to_dict()
    for path, value in edits.items():
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(tree)


def test_every_config_file_is_listed():
    files = {p.stem for p in (REPO / "heartlang_jax" / "configs").glob("*.py") if "def get_config" in p.read_text()}
    assert files == set(SHIPPED)


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in SHIPPED.items() for v in vs])
def test_shipped_configs_are_valid(name, variant):
    config = _config(name, variant)
    if name == "sweep":  # its pretrained cells need the run to start from (documented in the file)
        config.init_workdir = "runs/pretrain_base"
    assert type(stage_configs.validate(config)) is stages.STAGES[config.stage].schema


def test_a_sweep_of_pretrained_cells_needs_an_init_workdir():
    assert "\n  init_workdir: is empty but inits asks for pretrained cells" in _problems(_config("sweep", "tiny"))


def test_train_shards_must_divide_the_batch():
    config = _config("pretrain_base", "tiny")
    config.train_shards = 3
    assert "\n  train_shards: must divide batch_size (32), got 3" in _problems(config)


def _problems(config) -> str:
    with pytest.raises(stage_configs.ConfigError) as info:
        stage_configs.validate(config)
    return str(info.value)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("model.num_code", "model.num_code: unknown field; did you mean model.num_codes?"),
        ("num_train_step", "num_train_step: unknown field; did you mean num_train_steps?"),
        ("num_codes", "num_codes: unknown field; did you mean model.num_codes?"),  # at the wrong level
        ("optimizer.lr", "optimizer.lr: unknown field; optimizer has b1, b2, end_learning_rate"),
    ],
)
def test_unknown_field_is_named_with_a_suggestion(path, expected):
    assert expected in _problems(_edited("vqhbr", "tiny", {path: 3}))


@pytest.mark.parametrize(
    "name, path, value, expected",
    [
        ("vqhbr", "batch_size", "32", "batch_size: expected int, got str '32'"),
        ("vqhbr", "model.encoder.mask_padding", 1, "model.encoder.mask_padding: expected bool, got int 1"),
        ("pretrain_base", "model.mask_ratio", True, "model.mask_ratio: expected float, got bool True"),
        ("finetune", "encoder", 3, "encoder: expected a group of fields, got 3"),
        ("sweep", "tasks", "rhythm", "tasks: expected a tuple, got str 'rhythm'"),
        ("sweep", "seeds", (0, "1"), "seeds[1]: expected int, got str '1'"),
    ],
)
def test_wrong_type_is_named(name, path, value, expected):
    assert expected in _problems(_edited(name, "tiny", {path: value}))


@pytest.mark.parametrize(
    "name, path, value, expected",
    [
        ("vqhbr", "optimizer.b2", 1.0, "optimizer.b2: must be in [0, 1), got 1.0"),
        ("vqhbr", "model.commitment_weighting", "max", "model.commitment_weighting: must be one of ('mean', 'sum')"),
        ("vqhbr", "dtype", "fp16", "dtype: must be one of ('auto', 'float32', 'bfloat16')"),
        ("vqhbr", "model.encoder.num_heads", 0, "model.encoder.num_heads: must be positive, got 0"),
        ("finetune", "data.builder_config", "leads13", "data.builder_config: must be one of ('leads12'"),
        ("pipeline", "vqhbr.stage", "pretrain", "vqhbr.stage: must be 'vqhbr' here, got 'pretrain'"),
        ("finetune", "encoder.max_len", 128, "encoder.max_len: set by the program (from the dataset or config.dtype)"),
        (
            "finetune",
            "data.dataset",
            "ptb-xl",
            "data.dataset: must be one of ('ptbxl', 'cpsc2018', 'csn', 'mimic_iv_ecg', 'csv')",
        ),
        ("finetune", "task", "diagnosis", "task: must be one of the tasks of ptbxl ('superdiagnostic', "),
        ("pipeline", "sweep.tasks", ("rhythm", "diag"), "sweep.tasks[1]: must be one of the tasks of ptbxl"),
    ],
)
def test_bad_value_is_named(name, path, value, expected):
    assert expected in _problems(_edited(name, "demo" if name == "pipeline" else "tiny", {path: value}))


def test_tasks_and_builder_config_are_those_of_the_chosen_dataset():
    stage_configs.validate(_edited("finetune", "tiny", {"data.dataset": "csn", "task": "diagnosis"}))
    problems = _problems(_edited("finetune", "tiny", {"data.dataset": "cpsc2018", "task": "diagnosis"}))
    assert problems.endswith("\n  task: must be one of the tasks of cpsc2018 ('rhythm',), got 'diagnosis'")
    problems = _problems(_edited("vqhbr", "tiny", {"data.dataset": "mimic_iv_ecg", "data.builder_config": "leads1"}))
    assert problems.endswith(
        "\n  data.builder_config: must be one of ('leads12', 'leads12_xqrs', 'released') for mimic_iv_ecg, got 'leads1'"
    )


def test_missing_field_and_every_problem_are_reported():
    message = _problems(_edited("pretrain_base", "tiny", {"optimizer.b1": None, "seed": "0"}))
    assert message.startswith("2 problem(s) in the pretrain config")
    assert "optimizer.b1: missing" in message and "seed: expected int" in message


def test_unknown_stage_is_named():
    config = ml_collections.ConfigDict({"stage": "pretraining"})
    assert "config.stage must be one of" in _problems(config)


def _main(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "heartlang_jax.main", f"--workdir={tmp_path / 'run'}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_main_refuses_a_bad_config_file_before_any_compute(tmp_path):
    """One error line naming the field, exit code 2, and the workdir is never created."""
    config_file = tmp_path / "my_vqhbr.py"
    config_file.write_text(
        "import ml_collections\n"
        "from heartlang_jax.configs import vqhbr\n\n\n"
        "def get_config():\n"
        "    config = vqhbr.get_config('tiny').to_dict()\n"
        "    config['model']['num_code'] = 64\n"
        "    return ml_collections.ConfigDict(config)\n"
    )
    result = _main(tmp_path, f"--config={config_file}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ConfigError: 1 problem(s) in the vqhbr config" in result.stderr
    assert "model.num_code: unknown field; did you mean model.num_codes?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_main_names_an_override_of_no_field(tmp_path):
    result = _main(tmp_path, "--config=configs/vqhbr.py:tiny", "--config.model.num_codez=64")
    assert result.returncode == 1
    assert "--config.model.num_codez: unknown field; did you mean model.num_codes?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the package's own files are found
    resolved = configs.resolve_config_path("configs/vqhbr.py:tiny")
    assert resolved == f"{configs.PACKAGE_DIR / 'vqhbr.py'}:tiny"
    (tmp_path / "configs").mkdir()  # a file that exists as given wins over the package's
    (tmp_path / "configs" / "vqhbr.py").write_text("")
    assert configs.resolve_config_path("configs/vqhbr.py") == "configs/vqhbr.py"


def test_main_names_a_config_file_that_does_not_exist(tmp_path):
    result = _main(tmp_path, "--config=configs/vqhbrr.py:tiny")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "configs/vqhbrr.py" in line]
    assert len(errors) == 1 and "no such config file here or in the package; shipped: " in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
