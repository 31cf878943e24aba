"""Building the TFDS datasets of `tfds_ptbxl` and serving them as grain batches.

Batch sizes here are global. Training iterators are infinite, shuffled anew each epoch from a
seed that every host shares, and checkpointable (`get_state`/`set_state`), so a resumed run sees
exactly the batches it would have seen. Each host reads only its own rows of every global batch
(`parallel.host_slice`), evaluation included, so 1 and N hosts see the same global batches.
Evaluation batches cover a split once, padded to a fixed shape with a `mask` so that the jitted
eval step compiles once. A `MixtureSource` (several datasets' examples) is drawn from in
proportion to its weights (`train_dataset`).

Words leave the host as they are stored, float16 (half the bytes of float32), and lead and time
ids as uint8; the models cast them on the devices (see `parallel.shard_batch`). A source that can `gather`
rows (`split_cache.ColumnSource`, and concatenations of them) is read a batch at a time from
its memory-mapped columns instead of one decoded example at a time. A training source too large
to cache whole on every host is cut into host shards (`HostShards`): each host caches and reads
its own shards, and the global batches are the same on any number of hosts that divides them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from heartlang_jax.data import bundled_sample_dir, packing
from heartlang_jax.ecg.sentence_spec import SentenceSpec
from heartlang_jax.training import parallel

SENTENCE_FIELDS = ("words", "lead_ids", "time_ids")
BUNDLED = "bundled"  # the manual_dir of ptbxl that names the 500-record sample in the package


def prepare_dataset(
    data_dir: str | os.PathLike,
    *,
    dataset: str = "ptbxl",
    builder_config: str = "leads12",
    manual_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    builder_kwargs: Mapping | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds `dataset` (a name of `tfds_ptbxl.catalog`) once (later calls reuse it); returns its builder.

    `manual_dir` is the dataset's folder in its own published layout. For ptbxl, "bundled" means
    the 500-record sample shipped with the package and None downloads PTB-XL from PhysioNet; for
    the others None is TFDS's default, `<data_dir>/downloads/manual`. `builder_kwargs` go to the
    builder's constructor (ptbxl: `download_url`; cpsc2018, csn: `split_file`; mimic_iv_ecg:
    `chunk_size`, ...).
    """
    from tfds_ptbxl import catalog  # importing a builder registers it; pulls in the tokenizer

    if manual_dir == BUNDLED:
        if dataset != "ptbxl":
            raise ValueError(f"manual_dir='bundled' names the PTB-XL sample; {dataset} needs its own folder")
        manual_dir = bundled_sample_dir()
    builder_class = catalog.builder_class(dataset)

    def build() -> tfds.core.DatasetBuilder:
        builder = builder_class(
            config=builder_config,
            data_dir=os.fspath(data_dir),
            file_format="array_record",
            num_workers=num_workers,
            **dict(builder_kwargs or {}),
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
        )
        return builder

    # Process 0 builds; the others then open what it wrote (a shared or gs:// data_dir), or build
    # their own copy when data_dir is a per-host local disk. No host writes another's files.
    if jax.process_index() == 0:
        builder = build()
    parallel.barrier(f"heartlang_jax.prepare_dataset.{dataset}")
    if jax.process_index() != 0:
        try:
            builder = load_builder(data_dir, builder_config, dataset)
        except FileNotFoundError:
            builder = build()
    return builder


def load_builder(
    data_dir: str | os.PathLike, builder_config: str = "leads12", dataset: str = "ptbxl"
) -> tfds.core.DatasetBuilder:
    """Opens an already built dataset without importing the builder code."""
    path = epath.Path(data_dir) / dataset / builder_config
    versions = sorted((p for p in path.glob("*.*.*") if (p / "dataset_info.json").exists()), key=lambda p: p.name)
    if not versions:
        raise FileNotFoundError(f"no built {dataset}/{builder_config} dataset under {data_dir}; build it first")
    return tfds.builder_from_directory(os.fspath(versions[-1]))


def summarize(builder: tfds.core.DatasetBuilder) -> str:
    """A few human-readable lines: split sizes, tasks and their classes, amplitude scale, skipped
    records, records kept without flat leads. Any dataset: its splits and tasks are its own."""
    info = builder.info
    meta = info.metadata
    splits = ", ".join(f"{name}={split.num_examples}" for name, split in info.splits.items())
    classes = meta.get("classes") or {}
    dims = ", ".join(f"{task}={len(names)}" for task, names in classes.items()) or "none (unlabelled)"
    amp = meta["amplitude"]
    skipped = meta["skipped"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped["by_reason"].items())) or "none"
    lines = [
        f"{builder.name}/{builder.builder_config.name} at {builder.data_dir}",
        f"  splits: {splits}",
        f"  label classes: {dims}",
        f"  amplitude (train fit): mean={amp['mean']:.5f} mV, std={amp['std']:.5f} mV",
        f"  skipped records: {skipped['total']} ({reasons})",
    ]
    windows = meta.get("windows")  # the csv dataset: records cut into windows
    if windows is not None:
        lines.append(
            f"  windows: {windows['windows']} of {windows['records']} records "
            f"({windows['cut']} records longer than one window were cut)"
        )
    flat = meta.get("flat_leads")
    if flat is not None:
        leads = ", ".join(f"{k}={v}" for k, v in sorted(flat["by_lead"].items())) or "none"
        lines.append(f"  records kept without flat leads: {flat['total']} ({leads})")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _ToBatchFields:
    """Converts a stored example to model inputs (+ labels of one task, + its source index)."""

    source: Sequence
    task: str | None

    def __call__(self, index: int) -> dict[str, Any]:
        example = self.source[index]
        out: dict[str, Any] = {name: _host_dtype(name, example[name]) for name in SENTENCE_FIELDS}
        out["index"] = np.int32(index)
        if self.task is not None:
            out["labels"] = np.asarray(example[self.task], np.float32)
        return out

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The rows `indices` stacked, as `__call__` gives them one by one (fast for a gathering source)."""
        indices = np.asarray(indices, np.int64)
        if not can_gather(self.source):
            fields = [self(int(i)) for i in indices]
            return {key: np.stack([f[key] for f in fields]) for key in fields[0]}
        names = (*SENTENCE_FIELDS, self.task) if self.task is not None else SENTENCE_FIELDS
        columns = self.source.gather(indices, names)  # type: ignore[attr-defined]  # can_gather checked it
        out = {name: _host_dtype(name, columns[name]) for name in SENTENCE_FIELDS}
        out["index"] = indices.astype(np.int32)
        if self.task is not None:
            out["labels"] = columns[self.task].astype(np.float32)
        return out


# What leaves the host: stored float16 words and uint8 ids stay as they are (the models cast
# them on the devices); any other dtype becomes float32 / int32.
_NARROW = {"words": (np.float16,), "lead_ids": (np.uint8, np.int32), "time_ids": (np.uint8, np.int32)}
_WIDE = {"words": np.float32, "lead_ids": np.int32, "time_ids": np.int32}


def _host_dtype(name: str, value) -> np.ndarray:
    value = np.asarray(value)
    return value if value.dtype in _NARROW[name] else value.astype(_WIDE[name])


def can_gather(source) -> bool:
    """Whether `source` reads many rows at once (`gather(indices, fields)`)."""
    return callable(getattr(source, "gather", None)) and getattr(source, "gathers", True)


def labelled_indices(source: Sequence, task: str | None) -> np.ndarray:
    """Source indices of the examples that have at least one label of `task` (all when None)."""
    if task is None:
        return np.arange(len(source))
    if can_gather(source):
        labels = source.gather(np.arange(len(source)), (task,))[task]  # type: ignore[attr-defined]
        return np.flatnonzero(np.any(labels, axis=1)).astype(np.int64)
    return np.asarray([i for i in range(len(source)) if np.any(source[i][task])], np.int64)


def label_fraction_subset(
    indices: np.ndarray, fraction: float, seed: int, records: np.ndarray | None = None
) -> np.ndarray:
    """A seeded, stratification-free random subset (the released code's 1%/10% protocol).

    `records`: the record of each of `indices`, for a dataset that cuts records into windows;
    then `fraction` of the records is chosen and each keeps all its windows (the labels a user
    has are per record). Records in order of first appearance, so one window per record chooses
    what the plain subset does."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return indices
    if records is None:
        records = np.arange(len(indices))
    records = np.asarray(records)
    _, first = np.unique(records, return_index=True)
    first = np.sort(first)  # each record's first position, in index order
    count = max(1, round(fraction * len(first)))
    chosen = np.random.default_rng(seed).choice(len(first), size=count, replace=False)
    return indices[np.isin(records, records[first[chosen]])]


@dataclasses.dataclass(frozen=True)
class _HostRows:
    """A global batch of source indices -> this host's rows as stacked model inputs."""

    to_fields: _ToBatchFields
    rows: slice

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self.to_fields.gather(np.asarray(indices)[self.rows])


def train_dataset(
    source: Sequence,
    *,
    global_batch: int,
    seed: int,
    task: str | None = None,
    label_fraction: float = 1.0,
    rows: slice | None = None,
    indices: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    bucket_step: int = 0,
    bucket_window: int = 16,
) -> grain.MapDataset:
    """Infinite, per-epoch reshuffled global batches, of which this host reads its own `rows`
    (default: `parallel.host_slice`, the rows its devices hold). `indices`: the examples to train
    on, when the caller has found them (else the labelled ones of `task`, at `label_fraction`).

    Element b of the dataset is global batch b: its source indices are computed at once
    (`ShuffledBatches`, vectorized; grain's per-element shuffle cost 0.2 ms an example), then
    this host's rows are gathered. A `MixtureSource` is drawn from in proportion to its weights:
    each dataset is shuffled and repeated on its own (seeded by `seed` and its position) and a
    fixed, smooth interleaving pattern decides which dataset each position of the stream reads,
    so every global batch holds each dataset's share up to rounding and a resumed iterator
    continues the same sequence. `index` is the example's index in the mixture (its datasets'
    examples in order), as the pre-training targets are stored.

    With `lengths` (real words of every source example) and `bucket_step` > 0, the batches are
    length-bucketed (`packing.LengthGroupedOrder`: windows of `bucket_window` global batches
    sorted by length) and each host's rows carry `bucket_len`, the row length the stage cuts
    the batch to (`packing.trim`). Mixtures are not bucketed.
    """
    if isinstance(source, HostShards):  # its host's rows are its own (`host_shards`)
        if task is not None or label_fraction != 1.0 or indices is not None or rows is not None:
            raise ValueError("host shards train on every example of their split, unlabelled (VQ-HBR, pre-training)")
        return _sharded_train_dataset(
            source, global_batch, seed, lengths if bucket_step > 0 else None, bucket_step, bucket_window
        )
    host_rows = _HostRows(_ToBatchFields(source, task), rows or parallel.host_slice(global_batch))
    if isinstance(source, MixtureSource):
        offsets = np.cumsum([0, *(len(p) for p in source.parts[:-1])])
        streams = []
        for name, part, offset in zip(source.names, source.parts, offsets):
            indices = label_fraction_subset(labelled_indices(part, task), label_fraction, seed)
            if not len(indices):
                raise ValueError(f"{name} has no training example (task={task}) to mix")
            streams.append(indices + offset)
        batches = ShuffledBatches(streams, global_batch=global_batch, seed=seed, weights=source.weights)
    else:
        if indices is None:
            indices = label_fraction_subset(labelled_indices(source, task), label_fraction, seed)
        if len(indices) < global_batch:
            raise ValueError(
                f"{len(indices)} training examples (task={task}, label_fraction={label_fraction}) are fewer "
                f"than one global batch of {global_batch}; lower the batch size"
            )
        if lengths is not None and bucket_step > 0:
            order = packing.LengthGroupedOrder(
                indices,
                lengths,
                seed=seed,
                global_batch=global_batch,
                window=bucket_window,
                step=bucket_step,
                max_len=int(np.asarray(source[int(indices[0])]["lead_ids"]).shape[0]),
            )
            return grain.MapDataset.source(packing.BucketedBatches(order)).map(_BucketedRows(host_rows))
        batches = ShuffledBatches([indices], global_batch=global_batch, seed=seed)
    return grain.MapDataset.source(batches).map(host_rows)


@dataclasses.dataclass(frozen=True)
class _BucketedRows:
    """[global batch, 2] (source index, bucket length) rows -> this host's rows + `bucket_len`."""

    host_rows: _HostRows

    def __call__(self, items: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.host_rows(items[:, 0])
        batch[packing.BUCKET_KEY] = np.asarray(items[0, 1], np.int32)
        return batch


def _sharded_train_dataset(
    source: HostShards,
    global_batch: int,
    seed: int,
    lengths: np.ndarray | None,
    bucket_step: int,
    bucket_window: int,
) -> grain.MapDataset:
    """`train_dataset` of host shards: global batch b is batch b of every shard's own order, in
    shard order, each `global_batch / num_shards` rows long (`ShardedBatches`)."""
    host_rows = _HostRows(_ToBatchFields(source, None), source.rows)
    k = global_batch // source.num_shards
    weights = source.source.weights if isinstance(source.source, MixtureSource) else None
    if lengths is None:  # only this host's shards: the others' rows are never read here
        orders: list = [
            ShuffledBatches(source.shard_streams(s), global_batch=k, seed=seed, weights=weights, shard=s)
            if s in source.owned
            else None
            for s in range(source.num_shards)
        ]
        return grain.MapDataset.source(ShardedBatches(orders, k)).map(host_rows)
    if weights is not None:
        raise ValueError("mixtures are not length-bucketed")
    max_len = int(np.asarray(source[0]["lead_ids"]).shape[0])
    orders = [
        packing.BucketedBatches(
            packing.LengthGroupedOrder(
                np.concatenate(source.shard_streams(s)),
                lengths,
                seed=seed,
                global_batch=k,
                window=bucket_window,
                step=bucket_step,
                max_len=max_len,
                shard=s,
            )
        )
        for s in range(source.num_shards)
    ]
    return grain.MapDataset.source(ShardedBatches(orders, k)).map(_BucketedRows(host_rows))


class ShardedBatches(Sequence):
    """Global batch b of host shards: the concatenation of batch b of each shard's order.

    Rows [s*k, (s+1)*k) come from shard s, so a host whose rows are whole shards reads only its
    own. An order of None (another host's shard) leaves its rows -1 (never read here).
    Length-bucketed orders ([k, 2] rows: index, bucket) share one bucket, the largest of the
    shards' (every row of a global batch is cut to one length), so every host computes every
    shard's order (integers only) and all agree on the bucket.
    """

    def __init__(self, orders: Sequence[Sequence[np.ndarray] | None], k: int):
        self.orders, self.k = list(orders), k

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, batch: int) -> np.ndarray:  # type: ignore[override]
        out = np.concatenate([np.full(self.k, -1) if order is None else order[batch] for order in self.orders])
        if out.ndim == 2:
            out[:, 1] = out[:, 1].max()
        return out


# Cached columns of a training source up to this size are kept whole on every host; above it
# `train_shards=0` (automatic) cuts the source into host shards (PTB-XL's training folds: 0.9 GB of
# columns; MIMIC-IV-ECG: about 40 GB).
WHOLE_CACHE_BYTES = 8 << 30
# The most shards chosen automatically: a multiple of any power-of-two host count up to 64.
AUTO_SHARDS = 64


def cached_bytes(source) -> int:
    """Bytes the column cache of a source takes (0 for a source that is not cached)."""
    if isinstance(source, _ConcatSource):
        return sum(cached_bytes(p) for p in source.parts)
    measure = getattr(source, "cached_bytes", None)
    return int(measure()) if callable(measure) else 0


def auto_shards(source, global_batch: int) -> int:
    """`train_shards=0`: 1 when the source's cache fits `WHOLE_CACHE_BYTES`, else the largest power of
    two up to `AUTO_SHARDS` that divides the global batch (never the host count: the batches stay
    the same on any number of hosts)."""
    if cached_bytes(source) <= WHOLE_CACHE_BYTES:
        return 1
    count = AUTO_SHARDS
    while global_batch % count:
        count //= 2
    return count


def _restrict(source, lo: int, hi: int):
    """`source` holding only its rows [lo, hi) in its column caches (a source that reads on demand as is)."""
    if isinstance(source, _ConcatSource):
        starts = np.cumsum([0, *(len(p) for p in source.parts)])
        parts = tuple(
            _restrict(p, int(np.clip(lo - a, 0, len(p))), int(np.clip(hi - a, 0, len(p))))
            for p, a in zip(source.parts, starts)
        )
        return dataclasses.replace(source, parts=parts)
    restricted = getattr(source, "restricted", None)
    return restricted(lo, hi) if callable(restricted) else source


@dataclasses.dataclass(frozen=True)
class HostShards(Sequence):
    """A training source cut into `num_shards` shards, of which this host caches and reads its own.

    Each dataset of the source (each of a mixture's, else the source itself) is cut into
    `num_shards` contiguous ranges of near-equal size; shard s is range s of every dataset. Rows
    [s*k, (s+1)*k) of every global batch (k = global_batch / num_shards) come from shard s alone
    (`train_dataset`, `eval_batches`), and the host whose devices hold those rows (`rows`, its
    `parallel.host_slice`) caches and reads shards `owned` only. The batches depend on `num_shards`,
    not on the number of hosts: 1 x 4 devices and 2 x 2 see the same global batches.
    Indices are the whole source's (as the pre-training targets are stored).
    """

    source: Any  # the source, its column caches restricted to this host's rows
    num_shards: int
    global_batch: int
    rows: slice

    @property
    def owned(self) -> range:
        k = self.global_batch // self.num_shards
        return range(self.rows.start // k, self.rows.stop // k)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):  # type: ignore[override]  # int items only
        return self.source[index]

    def gather(self, indices: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        return self.source.gather(indices, fields)

    @property
    def gathers(self) -> bool:
        return can_gather(self.source)

    def _parts(self) -> tuple:
        return self.source.parts if isinstance(self.source, MixtureSource) else (self.source,)

    def shard_streams(self, shard: int) -> list[np.ndarray]:
        """Shard `shard`'s source indices, one array per dataset."""
        streams, offset = [], 0
        for part in self._parts():
            bounds = shard_bounds(len(part), self.num_shards)
            streams.append(np.arange(bounds[shard], bounds[shard + 1], dtype=np.int64) + offset)
            offset += len(part)
        return streams

    def own_indices(self) -> np.ndarray:
        return np.concatenate([np.concatenate(self.shard_streams(s)) for s in self.owned])

    def eval_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """`eval_batches`' rows of one pass: batch b holds chunk b of each shard at its rows,
        padded to the longest shard ([batches, global_batch] indices and real-row mask)."""
        k = self.global_batch // self.num_shards
        shards = [np.concatenate(self.shard_streams(s)) for s in range(self.num_shards)]
        num = max(-(-len(idx) // k) for idx in shards)
        padded = np.empty((num, self.num_shards, k), np.int64)
        real = np.zeros((num, self.num_shards, k), bool)
        for s, idx in enumerate(shards):
            column = np.full(num * k, idx[0])
            column[: len(idx)] = idx
            padded[:, s] = column.reshape(num, k)
            real[:, s] = (np.arange(num * k) < len(idx)).reshape(num, k)
        return padded.reshape(num, -1), real.reshape(num, -1)

    def real_lengths(self) -> np.ndarray:
        """Real words of every example: each host counts its own rows and the hosts exchange them."""
        own = self.own_indices()
        lengths = packing.real_lengths(self, own)
        counts = parallel.gather_host_rows(np.asarray([len(own)]))  # [hosts]
        width = int(counts.max())
        pairs = np.full((width, 2), -1, np.int64)
        pairs[: len(own)] = np.stack([own, lengths], axis=1)
        every = parallel.gather_host_rows(pairs)  # [hosts * width, 2]
        every = every[every[:, 0] >= 0]
        out = np.full(len(self), -1, np.int32)
        out[every[:, 0]] = every[:, 1]
        if (out < 0).any():
            raise ValueError(f"host shards: {int((out < 0).sum())} examples are no host's (rows {self.rows})")
        return out


def shard_bounds(n: int, count: int) -> np.ndarray:
    """The `count + 1` bounds of `n` examples cut into `count` contiguous, near-equal shards."""
    return np.arange(count + 1, dtype=np.int64) * n // count


def host_shards(source, count: int, global_batch: int, rows: slice | None = None) -> HostShards:
    """`source` cut into `count` host shards (see `HostShards`), this host's (`rows`, default
    `parallel.host_slice`) cached alone. ValueError, naming `train_shards`, when `count` does not
    divide the global batch, when a host's rows are not whole shards, or when a shard has fewer
    examples than the rows each batch draws from it."""
    rows = rows or parallel.host_slice(global_batch)
    if count < 1 or global_batch % count:
        raise ValueError(f"train_shards={count} must divide the global batch of {global_batch}")
    k = global_batch // count
    if rows.start % k or rows.stop % k:
        raise ValueError(
            f"train_shards={count}: each host must read whole shards of {k} rows, but this host holds "
            f"rows {rows.start}..{rows.stop - 1} of each global batch; make train_shards a multiple of the "
            f"process count ({jax.process_count()})"
        )
    parts = source.parts if isinstance(source, MixtureSource) else (source,)
    names = source.names if isinstance(source, MixtureSource) else ("the training source",)
    owned = range(rows.start // k, rows.stop // k)
    restricted = []
    for name, part in zip(names, parts):
        if len(part) // count < k:
            raise ValueError(
                f"train_shards={count}: {name} has {len(part)} examples, shards of {len(part) // count}, fewer than "
                f"the {k} rows each global batch draws from a shard; lower train_shards"
            )
        bounds = shard_bounds(len(part), count)
        restricted.append(_restrict(part, int(bounds[owned.start]), int(bounds[owned.stop])))
    inner = dataclasses.replace(source, parts=tuple(restricted)) if isinstance(source, MixtureSource) else restricted[0]
    return HostShards(inner, count, global_batch, rows)


# Positions of one turn of a mixture's interleaving pattern: weights are honoured to about 1/1024.
MIX_PERIOD = 1024


class ShuffledBatches(Sequence):
    """Global batch b -> the int64 source indices of its rows, for an endless stream of epochs.

    Each stream (a dataset's example indices) is permuted anew every epoch, by a generator
    seeded with (`seed`, the stream's position, the epoch), and repeated. With several streams,
    position p of the mixed stream reads stream `pattern[p % period]`: in one turn of the
    pattern stream i takes `counts[i]` positions (its weight's share, largest-remainder
    rounding), spread evenly (stride scheduling), so any run of positions holds each stream's
    share to within about one example. Everything is computed per batch with NumPy; the
    permutations of the epochs in use are cached. `shard`: these are the streams of shard
    `shard` of a split cut into host shards (`HostShards`), permuted with seeds of their own.
    """

    def __init__(
        self, streams: Sequence[np.ndarray], *, global_batch: int, seed: int, weights=None, shard: int | None = None
    ):
        self.streams = [np.asarray(s, np.int64) for s in streams]
        self.global_batch = int(global_batch)
        weights = np.asarray(weights if weights is not None else [1.0] * len(self.streams), np.float64)
        if len(self.streams) == 1:
            self.period, counts = self.global_batch, np.asarray([self.global_batch])
        else:
            self.period = self.global_batch * max(1, -(-MIX_PERIOD // self.global_batch))
            share = self.period * weights / weights.sum()
            counts = np.floor(share).astype(np.int64)
            counts[np.argsort(-(share - counts), kind="stable")[: self.period - counts.sum()]] += 1
            if (counts == 0).any():
                raise ValueError(
                    f"mixture weights {tuple(weights)}: stream {int(np.argmin(counts))} would get no example in "
                    f"{self.period} draws; raise its weight"
                )
        self.counts = counts
        times = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
        ids = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
        ranks = np.concatenate([np.arange(c) for c in counts])
        order = np.lexsort((ids, times))
        self.pattern, self.rank = ids[order], ranks[order]
        keys = [[seed, i] if shard is None else [seed, i, shard] for i in range(len(self.streams))]
        self.seeds = [int(np.random.SeedSequence(key).generate_state(1)[0]) for key in keys]
        self._permutation = functools.lru_cache(maxsize=4 * len(self.streams))(self._make_permutation)

    def _make_permutation(self, stream: int, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seeds[stream], epoch]).permutation(len(self.streams[stream]))
        return self.streams[stream][order]

    def __len__(self) -> int:
        return sys.maxsize  # endless: grain reads it like `repeat(None)`

    def __getitem__(self, batch: int) -> np.ndarray:  # type: ignore[override]
        position = int(batch) * self.global_batch + np.arange(self.global_batch, dtype=np.int64)
        turn, offset = np.divmod(position, self.period)
        stream = self.pattern[offset]
        drawn = turn * self.counts[stream] + self.rank[offset]  # how many of its stream came before
        out = np.empty(self.global_batch, np.int64)
        for i, examples in enumerate(self.streams):
            chosen = np.flatnonzero(stream == i)
            if not len(chosen):
                continue
            epoch, within = np.divmod(drawn[chosen], len(examples))
            for e in np.unique(epoch):
                here = epoch == e
                out[chosen[here]] = self._permutation(i, int(e))[within[here]]
        return out


# Host-side read-ahead of a training iterator: gathering a batch from the column cache is a few
# milliseconds of (mostly GIL-free) copying, so two threads and a few batches keep ahead of any
# step; grain's defaults (16 threads, 500 elements) would hold 500 global batches in memory.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
# Batches placed on the devices ahead of the step being run (`DevicePrefetcher`).
DEVICE_PREFETCH = 2


def train_iterator(dataset: grain.MapDataset) -> grain.DatasetIterator:
    """The checkpointable iterator over `train_dataset`'s batches, with the read-ahead above."""
    return iter(dataset.to_iter_dataset(READ_OPTIONS))


@dataclasses.dataclass(frozen=True)
class _Failure:
    error: BaseException


class DevicePrefetcher:
    """Yields (device batch, iterator state after it), `depth` batches ahead of the consumer.

    A thread reads the next host batches, applies `prepare` (e.g. looking up cached targets)
    and copies them to the devices (`parallel.shard_batch`) while the current step runs. The
    iterator state comes with each batch, so
    a checkpoint records the position after the last batch *consumed*, not after the ones read
    ahead, and a resumed run sees exactly the batches an uninterrupted one does. An error in
    the thread is raised by the `next()` that would have returned its batch.
    """

    def __init__(
        self,
        iterator: grain.DatasetIterator,
        mesh: jax.sharding.Mesh,
        prepare: Callable[[dict], dict] | None = None,
        depth: int = DEVICE_PREFETCH,
    ):
        self._iterator = iterator
        self._mesh = mesh
        self._prepare = prepare
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self.state = iterator.get_state()  # the position after the last batch handed out
        self._thread = threading.Thread(target=self._run, name="heartlang_jax-device-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._iterator)
                state = self._iterator.get_state()
                if self._prepare is not None:
                    batch = self._prepare(batch)
                self._put((parallel.shard_batch(batch, self._mesh), state))
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failure(e))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        batch, self.state = item
        return batch

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a waiting put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)


def eval_batches(
    source: Sequence, *, global_batch: int, task: str | None = None, indices: np.ndarray | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the labelled examples (`indices`, found here when None) in fixed-size global
    batches; this host's rows of each.

    `mask` marks real rows. Every host yields the same number of batches (the jitted step is
    collective), and gathering the hosts' rows in process order gives the split's order.
    A source that keeps a memo (`split_cache.ColumnSource`) assembles its batches once and
    hands out copies of them at later evaluations, when they fit `split_cache.EVAL_MEMO_BYTES`.
    """
    if isinstance(source, HostShards):  # each host reads its own shards (`HostShards.eval_layout`)
        if task is not None or indices is not None:
            raise ValueError("host shards are evaluated whole and unlabelled")
        yield from _eval_batches(source, None, *source.eval_layout(), source.rows)
        return
    if indices is None:
        indices = labelled_indices(source, task)
    rows = parallel.host_slice(global_batch)
    memo = getattr(source, "memo", None)
    if memo is None:
        yield from _eval_batches(source, task, *_eval_layout(indices, global_batch, task), rows)
        return
    from heartlang_jax.data import split_cache

    def assemble():
        host_bytes = len(indices) * _row_bytes(source) * jax.local_device_count()
        if host_bytes // max(jax.device_count(), 1) > split_cache.EVAL_MEMO_BYTES:
            return None
        return list(_eval_batches(source, task, *_eval_layout(indices, global_batch, task), rows))

    key = ("eval_batches", global_batch, task, len(indices), hash(np.asarray(indices).tobytes()), rows.start, rows.stop)
    batches = memo(key, assemble)
    if batches is None:
        yield from _eval_batches(source, task, *_eval_layout(indices, global_batch, task), rows)
        return
    for batch in batches:
        yield dict(batch)  # callers may add fields (e.g. targets) to their copy


def _row_bytes(source) -> int:
    return sum(np.asarray(v).nbytes for k, v in source[0].items() if k in SENTENCE_FIELDS)


def _eval_layout(indices: np.ndarray, global_batch: int, task: str | None) -> tuple[np.ndarray, np.ndarray]:
    """`indices` in order, in global batches: [batches, global_batch] indices (the last batch
    padded with the first index) and the real-row mask."""
    if len(indices) == 0:
        logging.warning("no labelled examples for task %s in this split", task)
        return np.zeros((0, global_batch), np.int64), np.zeros((0, global_batch), bool)
    num = -(-len(indices) // global_batch)
    padded = np.full(num * global_batch, indices[0], np.int64)
    padded[: len(indices)] = indices
    real = np.arange(num * global_batch) < len(indices)
    return padded.reshape(num, global_batch), real.reshape(num, global_batch)


def _eval_batches(
    source: Sequence, task: str | None, indices: np.ndarray, real: np.ndarray, rows: slice
) -> Iterator[dict[str, np.ndarray]]:
    """This host's `rows` of each global batch of `_eval_layout`'s (indices, real) rows."""
    to_fields = _ToBatchFields(source, task)
    for padded, mask in zip(indices, real):
        batch = to_fields.gather(padded[rows])
        blank = ~mask[rows]
        if blank.any():
            for value in batch.values():
                value[blank] = 0
        batch["mask"] = mask[rows]
        yield batch


def sentence_spec(builder: tfds.core.DatasetBuilder) -> dict:
    """How the dataset's sentences were cut (`SentenceSpec.to_dict()`).

    Read from the dataset (its `metadata["sentence"]`; for a dataset built before that held every
    field, its features' shape and builder config), never from literals, so a model's input
    shape follows the data it was trained on.
    """
    meta = dict(builder.info.metadata.get("sentence") or {})
    max_len, token_len = builder.info.features["words"].shape
    meta.setdefault("max_len", int(max_len))
    meta.setdefault("token_len", int(token_len))
    if "leads" not in meta and getattr(builder.builder_config, "leads", None):
        meta["leads"] = list(builder.builder_config.leads)
    if "detector" not in meta and getattr(builder.builder_config, "detector", None):
        meta["detector"] = builder.builder_config.detector
    return SentenceSpec.from_dict(meta).to_dict()


@dataclasses.dataclass(frozen=True)
class _ConcatSource:
    """Several data sources read as one, in order (e.g. PTB-XL's train + validation + test)."""

    parts: tuple

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int):
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)

    @property
    def gathers(self) -> bool:
        return all(can_gather(p) for p in self.parts)

    def gather(self, indices: np.ndarray, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows of the concatenation, each read from its part (all parts must gather)."""
        indices = np.asarray(indices, np.int64)
        starts = np.cumsum([0, *(len(p) for p in self.parts)])
        if len(indices) and (indices.min() < 0 or indices.max() >= starts[-1]):
            raise IndexError(f"row indices outside [0, {starts[-1]})")
        which = np.searchsorted(starts, indices, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for p, part in enumerate(self.parts):
            chosen = np.flatnonzero(which == p)
            if not len(chosen):
                continue
            rows = part.gather(indices[chosen] - starts[p], fields)
            for name, value in rows.items():
                if name not in out:
                    out[name] = np.empty((len(indices), *value.shape[1:]), value.dtype)
                out[name][chosen] = value
        return out


def concat_sources(sources: Sequence) -> Any:
    """One source, or their concatenation."""
    return sources[0] if len(sources) == 1 else _ConcatSource(tuple(sources))


@dataclasses.dataclass(frozen=True)
class MixtureSource(_ConcatSource):
    """Several datasets' training examples, read as one source (their examples in order) and
    drawn from by `train_dataset` in proportion to `weights`. Each dataset's words were
    standardized with its own amplitude fit when it was built, so mixing needs no rescaling."""

    names: tuple[str, ...]
    weights: tuple[float, ...]


def parse_mixture(entries: Sequence[str]) -> list[tuple[str, float]]:
    """`data.mixture` ("name:weight", ...) -> [(name, weight)]; ValueError saying what is wrong.

    Names are checked against the catalog by config validation; here only the form."""
    parsed = []
    for entry in entries:
        name, sep, weight = str(entry).partition(":")
        try:
            value = float(weight) if sep else None
        except ValueError:
            value = None
        if value is None or not name or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{entry!r} is not 'dataset:weight' with a positive weight (e.g. 'ptbxl:0.25')")
        parsed.append((name, value))
    names = [name for name, _ in parsed]
    if len(set(names)) < len(names):
        raise ValueError(f"a dataset is named twice in {tuple(entries)}")
    return parsed
