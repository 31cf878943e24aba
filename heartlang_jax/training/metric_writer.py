"""Metrics to TensorBoard (no TensorFlow needed) and to a grep-able JSON-lines file; progress/ETA.

Only process 0 writes, so multi-host jobs produce one log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath


def _scalar(value) -> float:
    return float(np.asarray(value))


class JsonLines:
    """An append-only JSON-lines file that also works where files cannot be appended to.

    A local file is opened in append mode and flushed after every line. An object store
    (`gs://...`) has no append: there the file's earlier lines (a resumed run's) are read once,
    new lines are kept in memory, and the whole object is rewritten, at most every
    `rewrite_every_s` seconds and on `close`. An object is replaced whole, so a reader never sees
    a torn line; a hard kill loses at most the last interval's lines (the checkpoint it resumes
    from is older than them anyway, so they are re-run).
    """

    def __init__(self, path: epath.Path, *, rewrite_every_s: float = 60.0, appendable: bool | None = None):
        """`appendable`: None = a local path is, a URL-style one is not (a seam for tests)."""
        self._path = path
        self._appendable = "://" not in os.fspath(path) if appendable is None else appendable
        self._rewrite_every_s = rewrite_every_s
        if self._appendable:
            self._file: Any = path.open("a")
        else:
            self._lines = path.read_text().splitlines(keepends=True) if path.exists() else []
            self._written_at = -math.inf

    def write(self, record: Mapping) -> None:
        line = json.dumps(record) + "\n"
        if self._appendable:
            self._file.write(line)
            self._file.flush()
            return
        self._lines.append(line)
        if time.monotonic() - self._written_at >= self._rewrite_every_s:
            self._rewrite()

    def _rewrite(self) -> None:
        self._path.write_text("".join(self._lines))
        self._written_at = time.monotonic()

    def close(self) -> None:
        if self._appendable:
            self._file.close()
        else:
            self._rewrite()


class MetricWriter:
    """Writes `{name: scalar}` per step to `<workdir>/tensorboard/` and `<workdir>/metrics.jsonl`,
    and images (TensorBoard only)."""

    def __init__(self, workdir: str | os.PathLike):
        self._enabled = jax.process_index() == 0
        self._jsonl: Any = None  # set on process 0 only; every writer returns early elsewhere
        self._tb: Any = None
        if self._enabled:
            from tensorboardX import SummaryWriter  # pure-Python event writer

            # epath, not pathlib: pathlib turns `gs://bucket/run` into the local `gs:/bucket/run`.
            # tensorboardX writes `gs://` logdirs itself.
            workdir = epath.Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(logdir=os.fspath(workdir / "tensorboard"))
            self._jsonl = JsonLines(workdir / "metrics.jsonl")

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if not self._enabled:
            return
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self._tb.add_text("hparams", "\n".join(f"    {k} = {v}" for k, v in sorted(flat.items())), 0)
        self._jsonl.write({"step": 0, "hparams": flat})

    def write_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        if not self._enabled or not scalars:
            return
        values = {k: _scalar(v) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write({"step": int(step), **values})

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """RGB uint8 images [H, W, 3] (e.g. `plots.figure_to_image`) to TensorBoard's Images tab."""
        if not self._enabled or not images:
            return
        for name, image in images.items():
            self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._enabled:
            self._tb.close()
            self._jsonl.close()


class Progress:
    """Steps/s and ETA for long runs, measured over the steps since the last report."""

    def __init__(self, total_steps: int, first_step: int = 0):
        self.total_steps = total_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def report(self, step: int, stage: str, scalars: Mapping[str, object] | None = None) -> float:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        remaining = (self.total_steps - step) / rate if rate > 0 else math.inf
        shown = " ".join(f"{k}={_scalar(v):.4g}" for k, v in (scalars or {}).items())
        logging.info(
            "[%s] step %d/%d (%.0f%%) %.2f steps/s ETA %s %s",
            stage,
            step,
            self.total_steps,
            100.0 * step / self.total_steps,
            rate,
            _format_eta(remaining),
            shown,
        )
        return rate


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
