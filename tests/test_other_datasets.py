"""Datasets beside PTB-XL chosen by the config: built from `data.manual_dirs`, summarized with
their own splits and tasks, and fine-tuned end to end through the sweep on a task of their own."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from heartlang_jax import errors
from heartlang_jax.configs import dataset as dataset_config
from heartlang_jax.data import input_pipeline
from heartlang_jax.stages import dataset as dataset_stage

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_config_names_the_dataset_and_its_folder(tmp_path):
    config = dataset_config.get_config()
    config.data.dataset = "cpsc2018"
    config.data.manual_dirs.cpsc2018 = str(tmp_path / "no-such-folder")
    with pytest.raises(errors.DatasetLayoutError, match=rf"CPSC 2018 folder {tmp_path}/no-such-folder does not exist"):
        dataset_stage.build_and_summarize(config, tmp_path / "run")
    assert (tmp_path / "run" / "tfds").is_dir()  # built under <workdir>/tfds, as ptbxl is


def test_summary_lists_the_datasets_own_splits_and_tasks(csn_tfds_dir):
    summary = input_pipeline.summarize(input_pipeline.load_builder(csn_tfds_dir, "leads12", "csn"))
    assert summary.splitlines()[0].startswith("csn/leads12 at ")
    splits = next(line for line in summary.splitlines() if line.strip().startswith("splits:"))
    assert sorted(splits.split(":", 1)[1].strip().split(", ")) == ["test=6", "train=12", "validation=6"]
    assert "label classes: diagnosis=38" in summary
    assert "records kept without flat leads: 0 (none)" in summary


def test_sweep_fine_tunes_a_csn_task_and_its_table_names_dataset_and_task(csn_tfds_dir, tmp_path):
    """A random-init linear probe of CSN's `diagnosis` through `python -m heartlang_jax.main`."""
    workdir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable, "-m", "heartlang_jax.main", "--config=configs/sweep.py:tiny", f"--workdir={workdir}",
            "--config.data.dataset=csn", f"--config.data.tfds_dir={csn_tfds_dir}", "--config.tasks=diagnosis",
            "--config.modes=linear", "--config.inits=random", "--config.seeds=0", "--config.label_fractions=1.0",
            "--config.finetune.num_train_steps=4", "--config.finetune.dtype=float32",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cell = json.loads((workdir / "cells" / "diagnosis_100pct_linear_random_seed0" / "result.json").read_text())
    assert (cell["dataset"], cell["task"], cell["num_train_records"]) == ("csn/leads12", "diagnosis", 12)
    table = (workdir / "results.md").read_text()
    header, _, ours, *_ = table.splitlines()
    assert header == "| setting | diagnosis 100% |"
    assert ours.startswith("| **ours: random init, linear** | ")
    assert "Ours: csn, mean" in table
    assert "- Dataset: csn/leads12; tasks: diagnosis." in table
    assert "paper" not in table.lower()  # the paper's numbers are PTB-XL's
