"""The sweep's report: each setting's mean test macro AUC over seeds with its bootstrap interval
over the test records, as `results.json` and as a Markdown table in the shape of paper Table 1
with the paper's own numbers under ours.

Each setting's mean comes with two error bars: the sample std over seeds, and a bootstrap 95%
interval over the test records (`test_interval`), from the per-record scores each cell saves
(`test_scores.npz`). On a small test split (the bundled sample has 66 records, some classes with
one or two positives) the second is the wider and the honest one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from etils import epath

from heartlang_jax.configs import schema
from heartlang_jax.data import input_pipeline
from heartlang_jax.evaluation import metrics as metrics_lib
from heartlang_jax.inference import model_info
from heartlang_jax.training import checkpointing

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
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
                "per_class": per_class_means(rows),
            }
        )
    return summary


PER_CLASS_FIGURES = ("auroc", "auprc", "f1", "sensitivity", "specificity", "threshold")


def per_class_means(rows: Sequence[dict]) -> dict[str, dict[str, float | None]] | None:
    """{class: {figure: mean over seeds}} of the cells' test per-class figures (result.json's
    `per_class`; a figure a seed lacks is left out of its mean, None when every seed lacks it);
    None when a cell predates them."""
    tables = [r.get("per_class", {}).get("test") for r in rows]
    if not tables or any(t is None for t in tables):
        return None
    out: dict[str, dict[str, float | None]] = {}
    for name in tables[0]:
        out[name] = {"positives": tables[0][name].get("positives")}
        for figure in PER_CLASS_FIGURES:
            values = [t[name][figure] for t in tables if t.get(name, {}).get(figure) is not None]
            out[name][figure] = float(np.mean(values)) if values else None
    return out


def per_class_markdown(summary: Sequence[dict]) -> str:
    """One table per setting: each class's test AUROC, AUPRC, and F1, sensitivity and specificity
    at the threshold chosen on the validation split (means over seeds)."""
    parts = []
    for s in summary:
        if not s.get("per_class"):
            continue
        init = "pre-trained" if s["init"] == "pretrained" else "random init"
        lines = [
            f"Per class, {s['task']} {s['label_fraction'] * 100:g}%, {init}, {s['mode']} "
            f"(test; mean over seeds {s['seeds']}; thresholds: {metrics_lib.THRESHOLD_RULE}):",
            "",
            "| class | test positives | AUROC | AUPRC | F1 | sensitivity | specificity | threshold |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, figures in s["per_class"].items():
            cells = ["n/a" if figures[f] is None else f"{figures[f]:.3f}" for f in PER_CLASS_FIGURES]
            lines.append(f"| {name} | {figures.get('positives')} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _fmt(mean: float | None, std: float | None, low: float | None = None, high: float | None = None) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if low is None or high is None else f"{text} [{100 * low:.2f}, {100 * high:.2f}]"


def results_markdown(config: schema.SweepStage, summary: Sequence[dict]) -> str:
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
    bundled = ptbxl and config.data.manual_dirs["ptbxl"] == input_pipeline.BUNDLED
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
        enc = model_info.read(checkpointing.absolute(config.init_workdir)).model["encoder"]
        notes.append(
            f"Our encoder: {enc['num_layers']} layers, hidden {enc['hidden_dim']}, {enc['num_heads']} heads, "
            f"position={enc['position']}, pre-trained in {os.fspath(checkpointing.absolute(config.init_workdir))}."
        )
    per_class = per_class_markdown(summary)
    tail = f"\n{per_class}\n" if per_class else ""
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" + tail


def write_results(config: schema.SweepStage, workdir, results: Sequence[dict], intervals: dict | None = None) -> str:
    """Writes results.json (every cell + the summary) and results.md; returns the Markdown."""
    summary = summarize(results, intervals)
    table = results_markdown(config, summary)
    checkpointing.atomic_write_text(
        workdir / RESULTS_JSON, json.dumps({"cells": list(results), "summary": summary}, indent=2)
    )
    checkpointing.atomic_write_text(workdir / RESULTS_MD, table)
    return table
