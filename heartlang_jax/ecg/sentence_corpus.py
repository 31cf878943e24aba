"""Records on disk to ECG sentences, streamed through a process pool.

The dataset builder and the benchmarks use this to turn thousands of WFDB files into sentences
on every core while holding only a few records in memory at a time. A record that cannot be read
or tokenized is not an exception here but a `SkipReason` that names it, so one bad file never
stops a 21,837-record build.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import itertools
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from heartlang_jax.ecg import records
from heartlang_jax.ecg import tokenizer as tokenizer_lib
from heartlang_jax.ecg.sentence_spec import SentenceSpec

__all__ = [
    "SentenceSpec",
    "SkipReason",
    "amplitude_moments",
    "standardize",
    "tokenize_records",
    "tokenize_windows",
    "window_spans",
]

_CHUNKSIZE = 8
_WINDOW_CHUNKS = 4


@dataclasses.dataclass(frozen=True)
class SkipReason:
    """Why a record produced no sentence: `kind` is a short category, `message` names the record."""

    kind: str
    message: str


def standardize(signal: np.ndarray, mean: float, std: float) -> np.ndarray:
    """`(signal - mean) / std` as float32: the one amplitude standardization, applied before
    tokenizing by the dataset builders and by inference alike (so zero-padding stays 0)."""
    return ((signal - mean) / std).astype(np.float32)


def _skip_reason(error: Exception) -> SkipReason:
    kind = type(error).__name__
    return SkipReason(kind=kind, message=str(error))


def _selected_rows(record: records.Record, leads: Sequence[str]) -> np.ndarray:
    """The signal rows of `leads` that the record has, by name."""
    names = [records.canonical_lead_name(name) for name in record.lead_names]
    rows = [names.index(lead) for lead in leads if lead in names]
    return record.signal[rows]


# Per-process state of the pool's workers (set by `_init_worker`).
_worker: dict = {}


def _init_worker(spec: SentenceSpec, mean: float, std: float) -> None:
    _worker.update(spec=spec, tokenizer=spec.make_tokenizer(), mean=mean, std=std)


def _init_pool_worker(spec: SentenceSpec, mean: float, std: float) -> None:
    """A forked worker shares its parent's memory until it writes to it, and the garbage collector
    writes to every object it scans: that copied ~30 MB of the parent into each worker. Objects
    frozen here are never scanned."""
    gc.freeze()
    _init_worker(spec, mean, std)


def _moments_of(path: os.PathLike | records.ArrayFile) -> tuple[int, float, float] | None:
    try:  # the samples the tokenizer uses, and only those are read
        record = records.load(path, max_seconds=_worker["tokenizer"].max_duration_s)
    except records.RecordError:
        return None  # the tokenizing pass logs and counts it
    signal = _selected_rows(record, _worker["spec"].leads).astype(np.float64)
    if signal.size == 0 or not np.isfinite(signal).all():
        return None
    if _worker["spec"].filter is not None:  # the moments of what the tokenizer reads: filtered, at its rate
        signal = _worker["tokenizer"].at_rate(signal, record.fs)
    return signal.size, float(signal.sum()), float(np.square(signal).sum())


def _sentence_of(item: tuple[int, os.PathLike]):
    key, path = item
    try:
        record = records.load(path, max_seconds=_worker["tokenizer"].max_duration_s)
        sentence = _worker["tokenizer"].tokenize(
            standardize(record.signal, _worker["mean"], _worker["std"]),
            record.fs,
            lead_names=record.lead_names,
            record_name=record.name,
        )
    except (records.RecordError, tokenizer_lib.TokenizerError) as e:
        return key, None, _skip_reason(e)
    # The dataset stores words as float16 (max 65504): a word that overflows would be inf on disk.
    with np.errstate(over="ignore"):
        stored = sentence.words.astype(np.float16)
    if not np.isfinite(stored).all():
        message = f"record {path}: a word overflows float16 after standardizing (|x| > 65504 std units)"
        return key, None, SkipReason(kind="NonFiniteAfterCast", message=message)
    return key, sentence, None


def window_spans(num_samples: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) samples of the windows a record of `num_samples` is read in, by datasets and
    by inference alike: one window, the whole record, when it is no longer than `window`; else a
    window every `stride` samples while a whole one fits, and, when those stop short of the end,
    one more that ends on the last sample (so no part of a record is left out, and every window
    is a whole `window` long)."""
    if num_samples <= window:
        return [(0, num_samples)]
    spans = [(start, start + window) for start in range(0, num_samples - window + 1, stride)]
    if spans[-1][1] < num_samples:
        spans.append((num_samples - window, num_samples))
    return spans


def _windows_of(item: tuple):
    """(key, [(window index, sentence or None, reason or None)], window count, record seconds)
    or (key, None, reason) for a record that cannot be read."""
    key, path, window_s, stride_s = item
    try:
        record = records.load(path)
    except records.RecordError as e:
        return key, None, _skip_reason(e)
    window, stride = max(1, round(window_s * record.fs)), max(1, round(stride_s * record.fs))
    signal = standardize(record.signal, _worker["mean"], _worker["std"])
    out: list[tuple[int, tokenizer_lib.EcgSentence | None, SkipReason | None]] = []
    for i, (start, end) in enumerate(window_spans(signal.shape[1], window, stride)):
        try:
            sentence = _worker["tokenizer"].tokenize(
                signal[:, start:end], record.fs, lead_names=record.lead_names, record_name=record.name
            )
        except tokenizer_lib.TokenizerError as e:
            out.append((i, None, _skip_reason(e)))
            continue
        out.append((i, sentence, None))
    return key, out, signal.shape[1] / record.fs


def _imap(fn: Callable, items: Iterable, spec: SentenceSpec, mean: float, std: float, num_workers: int) -> Iterator:
    """Ordered, lazy map over a process pool, with a bounded number of results held in memory.

    `Pool.imap` alone queues every item at once, and its results pile up in memory whenever the
    consumer (e.g. TFDS writing examples) is slower than the workers: ~100 KB per sentence, 2 GB
    for PTB-XL. So items go in windows of `_WINDOW_CHUNKS` chunks per worker, the next window
    queued while the current one is consumed, so workers never wait on a window boundary.

    Workers are forked (no re-import of numpy/scipy/wfdb per worker) unless JAX is loaded in this
    process: JAX runs threads, which a fork can deadlock, so then they are spawned.
    """
    if num_workers <= 1:
        _init_worker(spec, mean, std)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn" if "jax" in sys.modules else "fork")
    items = iter(items)
    window = num_workers * _CHUNKSIZE * _WINDOW_CHUNKS
    with context.Pool(num_workers, initializer=_init_pool_worker, initargs=(spec, mean, std)) as pool:
        queued: collections.deque = collections.deque()
        while batch := list(itertools.islice(items, window)):
            queued.append(pool.imap(fn, batch, chunksize=_CHUNKSIZE))
            if len(queued) == 2:
                yield from queued.popleft()
        while queued:
            yield from queued.popleft()


# A record is left out of the amplitude fit when its own std, or its mean's distance from the median
# record's mean, exceeds this many times the median record's std. Relative to the median record, so
# a dataset of near-identical records (a median absolute deviation near 0) loses none of them.
OUTLIER_FACTOR = 10.0


def _inliers(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Mask of the records [R] whose mean and std are not outliers among the records (see OUTLIER_FACTOR)."""
    scale = float(np.median(stds))
    if not scale > 0:  # most records flat: nothing to compare against, keep them all
        return np.ones(len(stds), bool)
    return (stds <= OUTLIER_FACTOR * scale) & (np.abs(means - np.median(means)) <= OUTLIER_FACTOR * scale)


def amplitude_moments(paths: Sequence[os.PathLike], spec: SentenceSpec, num_workers: int = 1) -> tuple[float, float]:
    """Mean and std of every sample of the spec's leads over `paths` (float64 sums), robust to a
    few hostile records: a record whose own std, or whose mean's distance from the median record's
    mean, exceeds OUTLIER_FACTOR (10) times the median record's std is logged by name and left out,
    so one record with a wrong gain cannot set the scale of the whole dataset.
    The pooled moments of the records kept are then exact, as before."""
    moments = [(path, m) for path, m in zip(paths, _imap(_moments_of, paths, spec, 0.0, 1.0, num_workers)) if m]
    if not moments:
        raise ValueError(f"none of the {len(paths)} training records could be read to fit the amplitude scale")
    sums = np.array([m for _, m in moments], dtype=np.float64)  # [R, 3]: count, sum, sum of squares
    means = sums[:, 1] / sums[:, 0]
    stds = np.sqrt(np.maximum(sums[:, 2] / sums[:, 0] - means**2, 0.0))
    keep = _inliers(means, stds)
    if keep.sum() < len(keep):
        left_out = [os.fspath(path) for (path, _), k in zip(moments, keep) if not k]
        logging.warning(
            "Amplitude fit: left out %d of %d records whose mean or std is an outlier (> %g x the median std): %s",
            len(left_out),
            len(keep),
            OUTLIER_FACTOR,
            ", ".join(left_out[:20]) + (" ..." if len(left_out) > 20 else ""),
        )
    count, total, total_sq = sums[keep].sum(axis=0)
    mean = float(total / count)
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    if not std > 0:
        raise ValueError("the training records have zero amplitude variance; cannot standardize")
    return mean, std


def tokenize_records(
    items: Sequence[tuple[int, os.PathLike]],
    spec: SentenceSpec,
    mean: float = 0.0,
    std: float = 1.0,
    num_workers: int = 1,
) -> Iterator[tuple[int, tokenizer_lib.EcgSentence | None, SkipReason | None]]:
    """Yields `(key, sentence, None)` or `(key, None, reason)` for each `(key, path)`, in order.

    Amplitudes are standardized as `(x - mean) / std` before tokenizing, so zero-padding stays 0.
    """
    yield from _imap(_sentence_of, items, spec, mean, std, num_workers)


def tokenize_windows(
    items: Sequence[tuple[int, os.PathLike | records.ArrayFile]],
    spec: SentenceSpec,
    mean: float,
    std: float,
    num_workers: int,
    window_s: float,
    stride_s: float,
) -> Iterator[tuple]:
    """Like `tokenize_records`, for records cut into windows of `window_s` seconds every
    `stride_s` seconds (`window_spans`), each standardized then tokenized on its own. Yields
    `(key, [(window, sentence | None, reason | None)], seconds)` per record, in order, or
    `(key, None, reason)` for a record that cannot be read."""
    jobs = ((key, path, window_s, stride_s) for key, path in items)
    yield from _imap(_windows_of, jobs, spec, mean, std, num_workers)
