"""Figures of what a model reads and what it learned; each function returns a matplotlib Figure.

matplotlib is imported when a function is first called, and figures are built without pyplot
(no global state, no backend needed: they save, display in notebooks after `%matplotlib inline`,
and `figure_to_image` renders them to an RGB array for TensorBoard).

    sentence = model.sentence(path)                     # heartlang_jax.load(run_folder)
    ecg_figure(sentence, model.word_ids(path))          # beats, words coloured by vocabulary index
    reconstruction_figure(vqhbr.reconstruct(path))      # VQ-HBR's reconstructions over the words
    codebook_usage_figure(ids, words)                   # histogram + the most frequent words
    embedding_projection_figure(embeddings, labels)     # PCA (UMAP if installed)
    results_figure("runs/demo/sweep/results.json")      # pre-trained vs random init, with error bars
    explanation_figure(classifier.explain(path, "NORM"))  # attributions per word, lead and beat
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from heartlang_jax.ecg.records import STANDARD_LEADS, canonical_lead_name

_INIT_COLORS = {"pretrained": "#1f77b4", "random": "#9a9a9a"}
_INIT_LABELS = {"pretrained": "pre-trained", "random": "random init"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _word_colors(word_ids: np.ndarray, num_codes: int | None) -> np.ndarray:
    """RGBA per word: 20 distinct colours cycled over the vocabulary index."""
    from matplotlib import colormaps

    del num_codes  # a continuous map over thousands of codes makes neighbours indistinguishable
    return colormaps["tab20"](np.asarray(word_ids) % 20)


def figure_to_image(figure, dpi: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a figure (for `SummaryWriter.add_image(..., dataformats="HWC")`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if dpi is not None:
        figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------------------------- the ECG


def ecg_figure(
    sentence,
    word_ids: np.ndarray | None = None,
    *,
    leads: Sequence[str] | None = None,
    num_codes: int | None = None,
    annotate: bool = True,
    title: str | None = None,
):
    """The standardized ECG with its detected beats (red dashes) and word boundaries (grey lines).

    Args:
      sentence: `inference.Sentence` (`model.sentence(ecg)`).
      word_ids: [num_words] vocabulary index of each word (`model.word_ids(ecg)`); words are then
        shaded in a colour per index and labelled with it. Without, words alternate in grey.
      leads: lead names to draw (default: every lead of the sentence).
      num_codes: vocabulary size (for the caption).
      annotate: write each word's index above it.
    """
    names = [canonical_lead_name(lead) for lead in leads] if leads else list(sentence.leads)
    unknown = [lead for lead, name in zip(leads or (), names) if name is None]
    if unknown:
        raise ValueError(f"unknown lead {unknown[0]!r}; leads are {STANDARD_LEADS}")
    rows = [sentence.leads.index(name) for name in names]
    fs = sentence.fs
    t = np.arange(sentence.signal.shape[1]) / fs
    figure = _figure(12, 0.55 + 1.0 * len(rows))
    axes = figure.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    n = sentence.num_words
    word_lead, word_beat = sentence.word_lead, sentence.word_beat
    colors = None if word_ids is None else _word_colors(np.asarray(word_ids)[:n], num_codes)
    for ax, row in zip(axes, rows):
        signal = sentence.signal[row]
        for k in np.flatnonzero(word_lead == row):
            start, end = sentence.beat_spans[word_beat[k]]
            color = colors[k] if colors is not None else ("#e6e6e6" if k % 2 else "#f4f4f4")
            ax.axvspan(start / fs, end / fs, color=color, alpha=0.35 if colors is not None else 1.0, lw=0)
            ax.axvline(start / fs, color="#b0b0b0", lw=0.5)
            if annotate and word_ids is not None:
                ax.text(
                    (start + end) / 2 / fs,
                    1.0,
                    str(int(word_ids[k])),
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=6,
                    color="#333333",
                )
        for q in sentence.beats:
            ax.axvline(q / fs, color="#d62728", lw=0.7, ls="--", alpha=0.8)
        ax.plot(t, signal, color="black", lw=0.7)
        ax.set_ylabel(sentence.leads[row], rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
        ax.margins(x=0)
    axes[-1].set_xlabel("time (s)")
    words_note = f"{n} words" + (f", vocabulary of {num_codes}" if num_codes else "")
    truncated = n < len(sentence.beats) * len(sentence.leads)
    figure.suptitle(
        title
        or f"{sentence.name}: {len(sentence.beats)} beats, {words_note}"
        + (" (sentence full: later leads have no words)" if truncated else "")
        + "; amplitudes standardized",
        fontsize=10,
    )
    return figure


# --------------------------------------------------------------------------- explanations


def explanation_figure(sentence, explanation=None, *, leads: Sequence[str] | None = None, title: str | None = None):
    """Integrated-gradients attributions (`model.explain(ecg, target)`) over the ECG, one axis per lead.

    Each word's span is shaded by its attribution (red raises the class's logit, blue lowers it;
    the colour scale is the largest |attribution| of the record), the trace is drawn over it, each
    lead's label carries its lead sum and the top axis each beat's sum (all leads).

    Args:
      sentence: the record's `inference.Sentence` (`explanation.sentence`); or the `Explanation`
        itself, then `explanation` is left out.
      explanation: `inference.Explanation` of that sentence.
      leads: lead names to draw (default: every lead of the sentence).
    """
    from matplotlib import colormaps

    if explanation is None:
        explanation, sentence = sentence, sentence.sentence
    names = [canonical_lead_name(lead) for lead in leads] if leads else list(sentence.leads)
    unknown = [lead for lead, name in zip(leads or (), names) if name is None or name not in sentence.leads]
    if unknown:
        raise ValueError(f"lead {unknown[0]!r} is not one of this record's leads {sentence.leads}")
    rows = [sentence.leads.index(name) for name in names]
    words = np.asarray(explanation.words, dtype=np.float64)
    scale = float(np.abs(words).max()) if words.size else 0.0
    scale = scale if scale > 0 else 1.0
    cmap = colormaps["RdBu_r"]
    fs = sentence.fs
    t = np.arange(sentence.signal.shape[1]) / fs
    figure = _figure(12, 0.75 + 1.0 * len(rows))
    axes = figure.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    word_lead, word_beat = sentence.word_lead, sentence.word_beat
    for ax, row in zip(axes, rows):
        for k in np.flatnonzero(word_lead == row):
            start, end = sentence.beat_spans[word_beat[k]]
            ax.axvspan(start / fs, end / fs, color=cmap(0.5 + 0.5 * words[k] / scale), alpha=0.8, lw=0)
        ax.plot(t, sentence.signal[row], color="black", lw=0.7)
        ax.set_ylabel(
            f"{sentence.leads[row]}\n{explanation.leads[row]:+.2g}", rotation=0, ha="right", va="center", fontsize=8
        )
        ax.tick_params(labelsize=7)
        ax.margins(x=0)
    for b, (start, end) in enumerate(sentence.beat_spans[: len(explanation.beats)]):
        axes[0].text(
            (start + end) / 2 / fs,
            1.02,
            f"{explanation.beats[b]:+.2g}",
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=6,
        )
    axes[-1].set_xlabel("time (s)")
    window = f", window {explanation.window + 1} of {explanation.num_windows}" if explanation.num_windows > 1 else ""
    figure.suptitle(
        title
        or f"{sentence.name}{window}: integrated gradients of {explanation.class_name} (logit "
        f"{explanation.logit:.3g}, flat-word baseline {explanation.baseline_logit:.3g}); red raises it, blue "
        f"lowers it (scale ±{scale:.2g}); per lead at the left, per beat on top",
        fontsize=9,
    )
    return figure


# --------------------------------------------------------------------------- reconstructions


def reconstruction_figure(
    words,
    reconstruction: np.ndarray | None = None,
    *,
    lead_ids: np.ndarray | None = None,
    word_ids: np.ndarray | None = None,
    max_words: int = 12,
    columns: int = 4,
    title: str | None = None,
):
    """VQ-HBR's reconstructions drawn over the input words, on a grid of `max_words` panels.

    Args:
      words: an `inference.Reconstruction` (`vqhbr_model.reconstruct(ecg)`), or the input words
        [L, T] of one sentence ([B, L, T]: the first sentence is drawn).
      reconstruction: [L, T] (or [B, L, T]) the decoder's output, when `words` is an array.
      lead_ids: [L] (or [B, L]); padding words (lead id 0) are left out.
      word_ids: [L] vocabulary index of each word, shown in the panel titles.
      max_words: words drawn, spread evenly over the sentence (so several leads show).
    """
    if hasattr(words, "reconstruction"):
        rec = words
        words, reconstruction, word_ids = rec.words, rec.reconstruction, rec.word_ids
        lead_ids = rec.sentence.lead_ids[: len(words)]
    words, reconstruction = np.asarray(words, np.float32), np.asarray(reconstruction, np.float32)
    if words.ndim == 3:
        words, reconstruction = words[0], reconstruction[0]
        lead_ids = None if lead_ids is None else np.asarray(lead_ids)[0]
        word_ids = None if word_ids is None else np.asarray(word_ids)[0]
    real = np.arange(len(words)) if lead_ids is None else np.flatnonzero(np.asarray(lead_ids) != 0)
    shown = (
        real[np.unique(np.linspace(0, len(real) - 1, min(max_words, len(real))).round().astype(int))]
        if len(real)
        else real
    )
    columns = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = _figure(2.6 * columns, 1.7 * rows + 0.5)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    for ax, k in zip(axes, shown):
        ax.plot(words[k], color="black", lw=1.0, label="input")
        ax.plot(reconstruction[k], color="#d62728", lw=1.0, ls="--", label="reconstruction")
        lead = "" if lead_ids is None else f" {STANDARD_LEADS[int(lead_ids[k]) - 1]}"
        code = "" if word_ids is None else f" #{int(word_ids[k])}"
        ax.set_title(f"word {k}{lead}{code}", fontsize=8)
        ax.tick_params(labelsize=6)
    if len(shown):
        axes[0].legend(fontsize=6, loc="upper right")
        mse = float(np.mean(np.square(reconstruction[real] - words[real])))
        figure.suptitle(title or f"VQ-HBR reconstructions (MSE {mse:.4f} over {len(real)} words)", fontsize=10)
    return figure


def reconstruction_figure_image(words, reconstruction=None, **kwargs) -> np.ndarray:
    """`reconstruction_figure` rendered to RGB uint8 [H, W, 3], e.g. for TensorBoard:
    `writer.add_image("eval/reconstruction", image, step, dataformats="HWC")`."""
    return figure_to_image(reconstruction_figure(words, reconstruction, **kwargs), dpi=80)


# ----------------------------------------------------------------------------- the vocabulary


def codebook_usage_figure(
    word_ids,
    words=None,
    *,
    num_codes: int | None = None,
    top_k: int = 12,
    max_examples: int = 30,
    title: str | None = None,
):
    """How often each vocabulary word is used, and the most frequent words drawn as waveforms.

    Args:
      word_ids: vocabulary indices of many real words: an array, or a list of per-record arrays.
      words: the matching heartbeat words [N, T] (or a list of [n_i, T]); each frequent code is
        then drawn as its words (faint, up to `max_examples`) and their mean.
      num_codes: vocabulary size (default: the largest index + 1).
    """
    ids = np.concatenate([np.ravel(x) for x in word_ids]) if _is_list_of_arrays(word_ids) else np.ravel(word_ids)
    ids = ids.astype(np.int64)
    num_codes = int(num_codes or (ids.max() + 1 if ids.size else 1))
    counts = np.bincount(ids, minlength=num_codes)
    order = np.argsort(-counts, kind="stable")
    top = [int(c) for c in order[:top_k] if counts[c] > 0]
    if words is not None:
        words = np.concatenate(list(words)) if _is_list_of_arrays(words) else np.asarray(words)
        if len(words) != len(ids):
            raise ValueError(f"{len(words)} words for {len(ids)} word ids")
    p = counts[counts > 0] / max(counts.sum(), 1)
    perplexity = float(np.exp(-np.sum(p * np.log(p)))) if p.size else 0.0

    panel_rows = 0 if words is None or not top else math.ceil(len(top) / 6)
    figure = _figure(12, 2.8 + 1.6 * panel_rows)
    grid = figure.add_gridspec(1 + panel_rows, 6, height_ratios=[2.2] + [1.6] * panel_rows)
    by_index = figure.add_subplot(grid[0, :4])
    by_index.stairs(counts, np.arange(num_codes + 1) - 0.5, fill=True, color="#1f77b4")
    by_index.set_xlabel("vocabulary index")
    by_index.set_ylabel("words")
    by_index.set_xlim(-0.5, num_codes - 0.5)
    ranked = figure.add_subplot(grid[0, 4:])
    used = counts[order][counts[order] > 0]
    ranked.plot(np.arange(1, len(used) + 1), used, color="#1f77b4")
    ranked.set_xscale("log")
    ranked.set_yscale("log")
    ranked.set_xlabel("rank")
    ranked.set_ylabel("words")
    ranked.set_title("rank-frequency", fontsize=9)
    for i, code in enumerate(top if panel_rows else []):
        ax = figure.add_subplot(grid[1 + i // 6, i % 6])
        members = np.asarray(words)[ids == code]
        for w in members[:max_examples]:
            ax.plot(w, color=_word_colors(np.array([code]), num_codes)[0], lw=0.5, alpha=0.35)
        ax.plot(members.mean(axis=0), color="black", lw=1.2)
        ax.set_title(f"#{code}: {counts[code]} words", fontsize=8)
        ax.tick_params(labelsize=6)
    figure.suptitle(
        title
        or f"Codebook usage: {np.count_nonzero(counts)} of {num_codes} words used by {ids.size} heartbeats, "
        f"perplexity {perplexity:.1f}"
        + ("; the most frequent words (mean in black)" if panel_rows else ""),
        fontsize=10,
    )
    return figure


def _is_list_of_arrays(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and np.ndim(x[0]) >= 1


# ------------------------------------------------------------------------------ embeddings


def project(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """([N, 2] coordinates, method used): "pca", "umap", or "auto" (UMAP if installed, else PCA)."""
    x = np.asarray(embeddings, np.float64)
    if method not in ("auto", "pca", "umap"):
        raise ValueError(f"method must be 'auto', 'pca' or 'umap', got {method!r}")
    if method in ("auto", "umap") and len(x) > 3:
        try:
            import umap  # optional: pip install umap-learn
        except ImportError:
            if method == "umap":
                raise ImportError("method='umap' needs umap-learn: pip install umap-learn") from None
        else:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
            return np.asarray(reducer.fit_transform(x)), "umap"
    centered = x - x.mean(axis=0)
    _, _s, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords, "pca"


def embedding_projection_figure(
    embeddings: np.ndarray,
    labels: Sequence[Any] | None = None,
    *,
    method: str = "auto",
    title: str | None = None,
    seed: int = 0,
):
    """A 2-D projection of embeddings [N, D], coloured by a label per point.

    Labels that are strings, bools or few distinct values are categories (a legend); many distinct
    numbers get a colour bar. `method`: "auto" (UMAP if umap-learn is installed, else PCA), "pca",
    "umap".
    """
    coords, used = project(embeddings, method, seed)
    figure = _figure(6.5, 5.2)
    ax = figure.add_subplot()
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=12, color="#1f77b4", alpha=0.8)
    else:
        labels = list(labels)
        if len(labels) != len(coords):
            raise ValueError(f"{len(labels)} labels for {len(coords)} embeddings")
        numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in labels)
        if numeric and len(set(labels)) > 12:
            points = ax.scatter(coords[:, 0], coords[:, 1], c=np.asarray(labels, np.float64), s=12, cmap="viridis")
            figure.colorbar(points, ax=ax)
        else:
            from matplotlib import colormaps

            categories = sorted({str(v) for v in labels})
            cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
            names = np.asarray([str(v) for v in labels])
            for i, category in enumerate(categories):
                keep = names == category
                ax.scatter(
                    coords[keep, 0],
                    coords[keep, 1],
                    s=12,
                    color=cmap(i % cmap.N),
                    alpha=0.8,
                    label=f"{category} ({int(keep.sum())})",
                )
            ax.legend(fontsize=7, markerscale=1.5, loc="best")
    axis = "UMAP" if used == "umap" else "PC"
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_title(title or f"{len(coords)} embeddings, {used.upper()}", fontsize=10)
    return figure


# --------------------------------------------------------------------------------- results


def _summary_rows(results) -> list[Mapping[str, Any]]:
    if isinstance(results, (str, os.PathLike)):
        from etils import epath

        results = json.loads(epath.Path(results).read_text())
    if isinstance(results, Mapping):
        results = results["summary"]
    return list(results)


def results_figure(results, *, title: str | None = None):
    """The sweep's results table as bars: test macro AUC, pre-trained against random init.

    Args:
      results: the sweep's summary rows (dicts with init, mode, task, label_fraction,
        test_auc_mean, test_auc_std and possibly ci_low / ci_high), the whole `results.json`
        dict, or its path. Error bars are the bootstrap interval over the test records when given
        (the sweep's ci_low / ci_high), else the std over seeds; a row without either has none.
    """
    rows = [r for r in _summary_rows(results) if r.get("test_auc_mean") is not None]
    modes = sorted({r["mode"] for r in rows})
    known = list(_INIT_COLORS)
    inits = sorted({r["init"] for r in rows}, key=lambda i: (known.index(i) if i in known else len(known), i))
    groups = sorted({(r["mode"], r["task"], float(r["label_fraction"])) for r in rows})
    by_key = {(r["mode"], r["task"], float(r["label_fraction"]), r["init"]): r for r in rows}
    figure = _figure(max(5.0, 1.1 * len(groups) * max(len(inits), 1) * 0.6 + 2), 4.2)
    ax = figure.add_subplot()
    width = min(0.8 / max(len(inits), 1), 0.3)
    fallback = iter(["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"] * 4)
    for j, init in enumerate(inits):
        x: list[float] = []
        heights: list[float] = []
        errors: list[list[float]] = [[], []]
        for g, (mode, task, fraction) in enumerate(groups):
            r = by_key.get((mode, task, fraction, init))
            if r is None:
                continue
            mean = float(r["test_auc_mean"])
            if r.get("ci_low") is not None and r.get("ci_high") is not None:
                low, high = mean - float(r["ci_low"]), float(r["ci_high"]) - mean
            else:
                low = high = float(r.get("test_auc_std") or 0.0)
            x.append(g + (j - (len(inits) - 1) / 2) * width)
            heights.append(mean)
            errors[0].append(max(low, 0.0))
            errors[1].append(max(high, 0.0))
        color = _INIT_COLORS.get(init) or next(fallback)
        bars = ax.bar(x, heights, width * 0.95, yerr=errors, capsize=3, color=color, label=_INIT_LABELS.get(init, init))
        ax.bar_label(bars, labels=[f"{100 * h:.1f}" for h in heights], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [f"{task}\n{100 * fraction:g}%" + (f"\n{mode}" if len(modes) > 1 else "") for mode, task, fraction in groups],
        fontsize=8,
    )
    if rows:
        low = min(
            min(float(r["test_auc_mean"]) - float(r.get("test_auc_std") or 0), float(r.get("ci_low") or 1.0))
            for r in rows
        )
        ax.set_ylim(max(0.0, min(0.5, low - 0.05)), 1.0)
    ax.axhline(0.5, color="#bbbbbb", lw=0.8, ls=":")
    ax.set_ylabel("test macro AUC")
    ax.legend(fontsize=8, loc="lower right")
    bars_are = (
        "bootstrap 95% interval over test records"
        if any(r.get("ci_low") is not None for r in rows)
        else "std over seeds"
    )
    ax.set_title(title or f"Downstream test macro AUC ({', '.join(modes)}; error bars: {bars_are})", fontsize=10)
    return figure
