"""Building the `ptbxl` TFDS dataset and serving it as grain batches.

Batch sizes here are global. Training iterators are infinite, shuffled anew each epoch from a
seed that every host shares, and checkpointable (`get_state`/`set_state`), so a resumed run sees
exactly the batches it would have seen. Each host reads only its own rows of every global batch
(`parallel.host_slice`), evaluation included, so 1 and N hosts see the same global batches.
Evaluation batches cover a split once, padded to a fixed shape with a `mask` so that the jitted
eval step compiles once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from heartlang_jax import parallel
from heartlang_jax import ptbxl

SENTENCE_FIELDS = ("words", "lead_ids", "time_ids")


def prepare_dataset(
    data_dir: str | os.PathLike,
    *,
    builder_config: str = "leads12",
    ptbxl_dir: str | os.PathLike | None = None,
    download_url: str | None = None,
    num_workers: int | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds the dataset once (later calls reuse it) and returns its builder.

    `ptbxl_dir` is a local PTB-XL folder; "bundled" means the 500-record sample shipped with the
    package; None downloads PTB-XL from PhysioNet (or `download_url`).
    """
    from tfds_ptbxl.ptbxl import ptbxl_dataset_builder  # registers `ptbxl`; pulls in the tokenizer

    if ptbxl_dir == "bundled":
        ptbxl_dir = ptbxl.bundled_sample_dir()

    def build() -> tfds.core.DatasetBuilder:
        builder = ptbxl_dataset_builder.Builder(
            config=builder_config,
            data_dir=os.fspath(data_dir),
            file_format="array_record",
            download_url=download_url,
            num_workers=num_workers,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(ptbxl_dir) if ptbxl_dir else None)
        )
        return builder

    # Process 0 builds; the others then open what it wrote (a shared or gs:// data_dir), or build
    # their own copy when data_dir is a per-host local disk. No host writes another's files.
    if jax.process_index() == 0:
        builder = build()
    parallel.barrier("heartlang_jax.prepare_dataset")
    if jax.process_index() != 0:
        try:
            builder = load_builder(data_dir, builder_config)
        except FileNotFoundError:
            builder = build()
    return builder


def load_builder(data_dir: str | os.PathLike, builder_config: str = "leads12") -> tfds.core.DatasetBuilder:
    """Opens an already built dataset without importing the builder code."""
    path = epath.Path(data_dir) / "ptbxl" / builder_config
    versions = sorted((p for p in path.glob("*.*.*") if (p / "dataset_info.json").exists()), key=lambda p: p.name)
    if not versions:
        raise FileNotFoundError(f"no built ptbxl/{builder_config} dataset under {data_dir}; build it first")
    return tfds.builder_from_directory(os.fspath(versions[-1]))


def summarize(builder: tfds.core.DatasetBuilder) -> str:
    """A few human-readable lines: split sizes, label dims, amplitude scale, skipped records."""
    info = builder.info
    meta = info.metadata
    splits = ", ".join(f"{name}={info.splits[name].num_examples}" for name in ("train", "validation", "test"))
    dims = ", ".join(f"{task}={len(meta['classes'][task])}" for task in ptbxl.TASKS)
    amp = meta["amplitude"]
    skipped = meta["skipped"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped["by_reason"].items())) or "none"
    return (
        f"ptbxl/{builder.builder_config.name} at {builder.data_dir}\n"
        f"  splits: {splits}\n"
        f"  label classes: {dims}\n"
        f"  amplitude (train fit): mean={amp['mean']:.5f} mV, std={amp['std']:.5f} mV\n"
        f"  skipped records: {skipped['total']} ({reasons})"
    )


@dataclasses.dataclass(frozen=True)
class _ToBatchFields:
    """Converts a stored example to model inputs (+ labels of one task, + its source index)."""

    source: Sequence
    task: str | None

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        example = self.source[index]
        out = {
            "words": np.asarray(example["words"], np.float32),
            "lead_ids": np.asarray(example["lead_ids"], np.int32),
            "time_ids": np.asarray(example["time_ids"], np.int32),
            "index": np.int32(index),
        }
        if self.task is not None:
            out["labels"] = np.asarray(example[self.task], np.float32)
        return out


def labelled_indices(source: Sequence, task: str | None) -> np.ndarray:
    """Source indices of the examples that have at least one label of `task` (all when None)."""
    if ptbxl.validate_task(task) is None:
        return np.arange(len(source))
    return np.asarray([i for i in range(len(source)) if np.any(source[i][task])], np.int64)


def label_fraction_subset(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratification-free random subset (the released code's 1%/10% protocol)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return indices
    count = max(1, int(round(fraction * len(indices))))
    chosen = np.random.default_rng(seed).choice(len(indices), size=count, replace=False)
    return indices[np.sort(chosen)]


@dataclasses.dataclass(frozen=True)
class _HostRows:
    """A global batch of source indices -> this host's rows as stacked model inputs."""

    to_fields: _ToBatchFields
    rows: slice

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        fields = [self.to_fields(int(i)) for i in indices[self.rows]]
        return {key: np.stack([f[key] for f in fields]) for key in fields[0]}


def train_dataset(
    source: Sequence,
    *,
    global_batch: int,
    seed: int,
    task: str | None = None,
    label_fraction: float = 1.0,
    rows: slice | None = None,
) -> grain.MapDataset:
    """Infinite, per-epoch reshuffled global batches, of which this host reads its own `rows`
    (default: `parallel.host_slice`, the rows its devices hold)."""
    indices = label_fraction_subset(labelled_indices(source, task), label_fraction, seed)
    if len(indices) < global_batch:
        raise ValueError(
            f"{len(indices)} training examples (task={task}, label_fraction={label_fraction}) are fewer "
            f"than one global batch of {global_batch}; lower the batch size"
        )
    return (
        grain.MapDataset.source(indices)
        .shuffle(seed=seed)
        .repeat(None)
        .batch(global_batch, drop_remainder=True)
        .map(_HostRows(_ToBatchFields(source, task), rows or parallel.host_slice(global_batch)))
    )


def eval_batches(source: Sequence, *, global_batch: int, task: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the labelled examples in fixed-size global batches; this host's rows of each.

    `mask` marks real rows. Every host yields the same number of batches (the jitted step is
    collective), and gathering the hosts' rows in process order gives the split's order.
    """
    indices = labelled_indices(source, task)
    if len(indices) == 0:
        logging.warning("no labelled examples for task %s in this split", task)
        return
    to_fields = _ToBatchFields(source, task)
    rows = parallel.host_slice(global_batch)
    blank = jax.tree.map(np.zeros_like, to_fields(int(indices[0])))
    for start in range(0, len(indices), global_batch):
        chunk = indices[start : start + global_batch]
        real = np.arange(global_batch) < len(chunk)
        mine = [to_fields(int(chunk[i])) if real[i] else blank for i in range(global_batch)[rows]]
        batch = {key: np.stack([row[key] for row in mine]) for key in blank}
        batch["mask"] = real[rows]
        yield batch



def sentence_spec(builder: tfds.core.DatasetBuilder) -> dict:
    """How the dataset's sentences were cut: leads, max_len, token_len, fs, detector.

    Read from the dataset (its `metadata["sentence"]`, else its features and builder config),
    never from literals, so a model's input shape follows the data it was trained on.
    """
    meta = dict(builder.info.metadata.get("sentence") or {})
    max_len, token_len = builder.info.features["words"].shape
    meta.setdefault("max_len", int(max_len))
    meta.setdefault("token_len", int(token_len))
    meta.setdefault("leads", list(getattr(builder.builder_config, "leads", ())))
    meta.setdefault("fs", 100)
    meta.setdefault("detector", getattr(builder.builder_config, "detector", "multilead"))
    return meta


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


def concat_sources(sources: Sequence) -> Sequence:
    """One source, or their concatenation."""
    return sources[0] if len(sources) == 1 else _ConcatSource(tuple(sources))
