"""The downstream grid of paper Tables 1-2, run cell by cell, summarized beside the paper's numbers.

Each cell (task, label fraction, mode, seed, init) is one fine-tuning run in its own workdir
`<workdir>/cells/<name>/`. A cell whose `result.json` exists is finished and skipped, so an
interrupted sweep is resumed by rerunning the same command (an unfinished cell resumes from its
own checkpoint). `results.json` and `results.md` are rewritten after every cell. The grid and
the pre-training run are checked before the first cell trains.

Each setting's mean test macro AUC comes with two error bars: the sample std over seeds, and a
bootstrap 95% interval over the test records (`test_interval`), from the per-record scores each
cell saves (`test_scores.npz`). On a small test split (the bundled sample has 66 records, some
classes with one or two positives) the second is the wider and the honest one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from heartlang_jax.configs import schema as stage_configs
from heartlang_jax.data import input_pipeline
from heartlang_jax.evaluation import metrics as metrics_lib
from heartlang_jax.inference import model_info
from heartlang_jax.models import ECGFormerConfig
from heartlang_jax.stages import common, finetune
from heartlang_jax.training import checkpointing, parallel

CELLS_DIR = "cells"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
INITS = ("pretrained", "random")
# The bootstrap interval over the test records: its level, resamples and fixed RNG seed.
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
TASK_SHORT = {"superdiagnostic": "super", "subdiagnostic": "sub", "form": "form", "rhythm": "rhythm"}


def _paper_row(values: dict[str, Sequence[float]]) -> dict[tuple[str, float], float]:
    """{task: (1%, 10%, 100%)} -> {(task, fraction): value}."""
    return {(task, f): v for task, row in values.items() for f, v in zip((0.01, 0.1, 1.0), row)}


# Test macro AUC (%) reported by the paper (SPEC §6), under the (init, mode) row of ours they
# compare with: {(init, mode): [(row label, {(task, fraction): value})]}.
PAPER_ROWS = {
    ("pretrained", "linear"): [
        (
            "paper: HeartLang-Small (Table 1)",
            _paper_row(
                {
                    "superdiagnostic": (70.61, 84.23, 87.89),
                    "subdiagnostic": (58.08, 73.68, 87.12),
                    "form": (59.61, 65.28, 77.61),
                    "rhythm": (69.95, 83.26, 92.36),
                }
            ),
        ),
        (
            "paper: HeartLang-Base (Table 1)",
            _paper_row(
                {
                    "superdiagnostic": (71.44, 83.97, 87.96),
                    "subdiagnostic": (60.55, 76.60, 86.66),
                    "form": (57.76, 63.14, 77.43),
                    "rhythm": (56.32, 71.71, 90.54),
                }
            ),
        ),
    ],
    ("pretrained", "full"): [
        (
            "paper: HeartLang-Small (Table 2)",
            {
                ("superdiagnostic", 1.0): 90.37,
                ("subdiagnostic", 1.0): 90.05,
                ("form", 1.0): 82.36,
                ("rhythm", 1.0): 92.31,
            },
        ),
    ],
    ("random", "linear"): [
        (
            "paper: Random Init-Small (Table 1)",
            {
                ("superdiagnostic", 1.0): 80.75,
                ("subdiagnostic", 1.0): 75.51,
                ("form", 1.0): 61.46,
                ("rhythm", 1.0): 76.95,
            },
        ),
    ],
}


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    label_fraction: float
    mode: str
    init: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}_{self.label_fraction * 100:g}pct_{self.mode}_{self.init}_seed{self.seed}"


def cells(config: ml_collections.ConfigDict) -> list[Cell]:
    """The grid, in the order it runs (all cheap linear cells of a task before its full ones).

    Its values were checked by the typed sweep config (`stage_configs.SweepStage`).
    """
    grid = itertools.product(config.tasks, config.modes, config.label_fractions, config.inits, config.seeds)
    return [Cell(task, float(f), mode, init, int(seed)) for task, mode, f, init, seed in grid]


def cell_config(config: ml_collections.ConfigDict, cell: Cell, tfds_dir: str, encoder) -> ml_collections.ConfigDict:
    """The fine-tuning config of one cell; its dataset is the sweep's (built once, shared)."""
    cfg = ml_collections.ConfigDict(config.finetune.to_dict())
    cfg.stage = finetune.STAGE
    cfg.data = ml_collections.ConfigDict(config.data.to_dict())
    cfg.data.tfds_dir = tfds_dir
    cfg.task = cell.task
    cfg.mode = cell.mode
    cfg.label_fraction = cell.label_fraction
    cfg.seed = cell.seed
    cfg.init_workdir = os.fspath(checkpointing.absolute(config.init_workdir)) if cell.init == "pretrained" else ""
    if encoder is not None:
        cfg.encoder = encoder
    return cfg


def _random_init_encoder(config: ml_collections.ConfigDict):
    """Random-init cells copy the pre-trained run's architecture, so both rows compare like with like.

    Dropout stays the fine-tuning config's, as it does for the pre-trained cells.
    """
    if not config.init_workdir:
        return None
    fields = dict(model_info.read(checkpointing.absolute(config.init_workdir)).model["encoder"])
    # The cell's stage derives these from the dataset and config.dtype.
    encoder = ml_collections.ConfigDict({k: v for k, v in fields.items() if k not in ECGFormerConfig.DERIVED})
    for name in finetune.REGULARIZATION_FIELDS:
        encoder[name] = config.finetune.encoder[name]
    return encoder


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs every unfinished cell, then writes and prints the results table."""
    stage_configs.validate(config)  # every field judged before any data is read or workdir claimed
    workdir = checkpointing.absolute(workdir)
    grid = cells(config)
    if "pretrained" in config.inits:
        model_info.read(checkpointing.absolute(config.init_workdir))  # fails before the first cell
    tfds_dir = os.fspath(common.tfds_dir(config, workdir).absolute())
    encoder = _random_init_encoder(config)
    configs = {cell: cell_config(config, cell, tfds_dir, encoder if cell.init == "random" else None) for cell in grid}
    results, table = [], ""
    intervals: dict = {}  # bootstrap intervals by their cells' score files: each computed once per sweep
    for i, cell in enumerate(grid):
        cell_dir = workdir / CELLS_DIR / cell.name
        result_path = cell_dir / finetune.RESULT_FILE
        if result_path.exists():
            logging.info("[sweep] cell %d/%d %s: finished earlier, skipped", i + 1, len(grid), cell.name)
        else:
            logging.info("[sweep] cell %d/%d %s", i + 1, len(grid), cell.name)
            finetune.train_and_evaluate(configs[cell], cell_dir)
            if not config.keep_cell_checkpoints:
                parallel.barrier(f"heartlang_jax.stages.sweep.{cell.name}")
                if jax.process_index() == 0:
                    (cell_dir / checkpointing.CHECKPOINT_DIR).rmtree(missing_ok=True)
        result = {"cell": cell.name, "init_kind": cell.init, **json.loads(result_path.read_text())}
        if (cell_dir / finetune.TEST_SCORES_FILE).exists():  # cells finished before it was saved have none
            result["test_scores"] = os.fspath(cell_dir / finetune.TEST_SCORES_FILE)
        results.append(result)
        table = write_results(config, workdir, results, intervals)  # after every cell: partial results survive
    print(table, flush=True)
    return results


def test_interval(rows: Sequence[dict], cache: dict | None = None) -> dict | None:
    """Bootstrap 95% interval over the test records of a setting's mean test macro AUC over seeds:
    {"ci_low", "ci_high", "num_test_records"}, or None when a seed has no saved scores.

    Each of `BOOTSTRAP_RESAMPLES` resamples (fixed seed) draws the test records with replacement;
    every seed's macro AUC is computed on that same resample and the seeds' AUCs are averaged
    (`metrics.bootstrap_macro_auc`); the interval holds the middle 95% of those averages. The
    seeds are bootstrapped and averaged rather than pooled into one ensemble prediction per
    record, because the ensemble's AUC is a different (usually higher) number than the mean of
    the seeds' AUCs that the table reports: this way the interval is about the number it sits
    beside. Scores are the logits of the reported (best validation) weights, so on the full
    sample of records each seed's macro AUC is its `test_auc`.
    """
    paths = [r.get("test_scores") for r in rows if r["test_auc"] is not None]
    if not paths or None in paths:
        return None
    key = tuple(sorted(str(p) for p in paths))
    if cache is not None and key in cache:
        return cache[key]
    loaded = []
    for path in key:
        with epath.Path(path).open("rb") as f:
            loaded.append(dict(np.load(f).items()))
    first = loaded[0]
    if any(
        not np.array_equal(d["index"], first["index"]) or not np.array_equal(d["labels"], first["labels"])
        for d in loaded
    ):
        logging.warning("[sweep] the seeds of %s were tested on different records; no bootstrap interval", key)
        return None
    low, high = metrics_lib.bootstrap_interval(
        first["labels"],
        np.stack([d["logits"] for d in loaded]),
        level=CI_LEVEL,
        num_resamples=BOOTSTRAP_RESAMPLES,
        seed=BOOTSTRAP_SEED,
    )
    interval = None if np.isnan(low) else {"ci_low": low, "ci_high": high, "num_test_records": len(first["index"])}
    if cache is not None:
        cache[key] = interval
    return interval


def summarize(results: Sequence[dict], intervals: dict | None = None) -> list[dict]:
    """Mean and sample std of the test macro AUC over seeds, per (init, mode, task, fraction), and
    the bootstrap interval over the test records (`test_interval`; `intervals` caches them)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["init_kind"], r["mode"], r["task"], r["label_fraction"]), []).append(r)
    summary = []
    for (init, mode, task, fraction), rows in groups.items():
        aucs = np.asarray([r["test_auc"] for r in rows if r["test_auc"] is not None], np.float64)
        summary.append(
            {
                "init": init,
                "dataset": rows[0].get("dataset"),
                "mode": mode,
                "task": task,
                "label_fraction": fraction,
                "seeds": sorted(r["seed"] for r in rows),
                "n": len(aucs),
                "test_auc_mean": float(aucs.mean()) if len(aucs) else None,
                "test_auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else None,
                "ci_low": None,
                "ci_high": None,
                "num_test_records": None,
                **(test_interval(rows, intervals) or {}),
            }
        )
    return summary


def _fmt(mean: float | None, std: float | None, low: float | None = None, high: float | None = None) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if low is None or high is None else f"{text} [{100 * low:.2f}, {100 * high:.2f}]"


def results_markdown(config: ml_collections.ConfigDict, summary: Sequence[dict]) -> str:
    """Paper Table 1's shape: a row per setting, a column per task x fraction; under each of our
    rows, the paper's rows for the same setting, so each of our numbers sits over the paper's."""
    columns = [(task, float(f)) for task in config.tasks for f in config.label_fractions]
    by_key = {(s["init"], s["mode"], s["task"], s["label_fraction"]): s for s in summary}
    ptbxl = config.data.dataset == "ptbxl"  # the paper's numbers are PTB-XL's
    header = "| setting | " + " | ".join(f"{TASK_SHORT.get(t, t)} {f * 100:g}%" for t, f in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for mode, init in itertools.product(config.modes, config.inits):
        values = []
        for task, f in columns:
            s = by_key.get((init, mode, task, f))
            values.append(
                _fmt(s["test_auc_mean"], s["test_auc_std"], s.get("ci_low"), s.get("ci_high")) if s else "not run"
            )
        label = f"**ours: {'pre-trained' if init == 'pretrained' else 'random init'}, {mode}**"
        lines.append(f"| {label} | " + " | ".join(values) + " |")
        for paper_label, paper in PAPER_ROWS.get((init, mode), []) if ptbxl else []:
            lines.append(
                f"| {paper_label} | " + " | ".join(f"{paper[c]:.2f}" if c in paper else "–" for c in columns) + " |"
            )
    seeds = sorted({seed for s in summary for seed in s["seeds"]})
    bundled = ptbxl and config.data.manual_dirs.ptbxl == input_pipeline.BUNDLED
    data = "the bundled 500-record PTB-XL sample" if bundled else config.data.dataset
    notes = [
        "Test macro AUC (%) at the epoch with the best validation macro AUC.",
        f"Ours: {data}, mean ± sample std over seeds {seeds} (a single seed shows no std).",
    ]
    if ptbxl:
        notes.append("Paper: HeartLang pre-trained on all of PTB-XL (SPEC §6); '–' = not reported.")
    if bundled:
        notes.append(
            "The sample's test split holds 66 records, some classes with one or two positives: a few points "
            "of macro AUC are within the noise of which records were drawn, which the seed-to-seed std does not show."
        )
    records = sorted({s["num_test_records"] for s in summary if s.get("ci_low") is not None})
    if records:
        notes.append(
            f"[low, high]: bootstrap {100 * CI_LEVEL:g}% interval over the {'/'.join(map(str, records))} test records "
            f"({BOOTSTRAP_RESAMPLES} resamples with replacement, RNG seed {BOOTSTRAP_SEED}; on each, every seed's macro "
            "AUC, classes without a positive or a negative left out, averaged over the seeds): how much the score "
            "depends on which records are in the test split."
        )
    datasets = sorted({s["dataset"] for s in summary if s.get("dataset")})
    if datasets:
        notes.append(f"Dataset: {', '.join(datasets)}; tasks: {', '.join(config.tasks)}.")
    if config.init_workdir:
        enc = ml_collections.ConfigDict(
            dict(model_info.read(checkpointing.absolute(config.init_workdir)).model["encoder"])
        )
        notes.append(
            f"Our encoder: {enc.num_layers} layers, hidden {enc.hidden_dim}, {enc.num_heads} heads, "
            f"position={enc.position}, pre-trained in {os.fspath(checkpointing.absolute(config.init_workdir))}."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_results(
    config: ml_collections.ConfigDict, workdir, results: Sequence[dict], intervals: dict | None = None
) -> str:
    """Writes results.json (every cell + the summary) and results.md; returns the Markdown."""
    summary = summarize(results, intervals)
    table = results_markdown(config, summary)
    checkpointing.atomic_write_text(
        workdir / RESULTS_JSON, json.dumps({"cells": list(results), "summary": summary}, indent=2)
    )
    checkpointing.atomic_write_text(workdir / RESULTS_MD, table)
    return table
