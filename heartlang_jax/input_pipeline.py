"""Building the `ptbxl` TFDS dataset and serving it as grain batches.

Training iterators are infinite, shuffled anew each epoch from a seed, sharded per host and
checkpointable (`get_state`/`set_state`), so a resumed run sees exactly the batches it would
have seen. Evaluation batches cover a split once, padded to a fixed shape with a `mask` so that
the jitted eval step compiles once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

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


def load_builder(data_dir: str | os.PathLike, builder_config: str = "leads12") -> tfds.core.DatasetBuilder:
    """Opens an already built dataset without importing the builder code."""
    path = pathlib.Path(data_dir) / "ptbxl" / builder_config
    versions = sorted(p for p in path.glob("*.*.*") if (p / "dataset_info.json").is_file())
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


def train_dataset(
    source: Sequence,
    *,
    batch_size: int,
    seed: int,
    task: str | None = None,
    label_fraction: float = 1.0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Infinite, per-epoch reshuffled batches of this host's shard. `batch_size` is per host."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    indices = label_fraction_subset(labelled_indices(source, task), label_fraction, seed)
    shard = indices[process_index::process_count]
    if len(shard) < batch_size:
        raise ValueError(
            f"host {process_index} has {len(shard)} training examples (task={task}, "
            f"label_fraction={label_fraction}), fewer than one batch of {batch_size}; lower the batch size"
        )
    return (
        grain.MapDataset.source(shard)
        .shuffle(seed=seed + process_index)
        .repeat(None)
        .map(_ToBatchFields(source, task))
        .batch(batch_size, drop_remainder=True)
    )


def train_iterator(dataset: grain.MapDataset) -> grain.DatasetIterator:
    """The checkpointable iterator; save `it.get_state()`, resume with `it.set_state(state)`."""
    return iter(dataset.to_iter_dataset())


def eval_batches(source: Sequence, *, batch_size: int, task: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the labelled examples in fixed-size batches; `mask` marks real rows."""
    indices = labelled_indices(source, task)
    if len(indices) == 0:
        logging.warning("no labelled examples for task %s in this split", task)
    to_fields = _ToBatchFields(source, task)
    for start in range(0, len(indices), batch_size):
        rows = [to_fields(int(i)) for i in indices[start : start + batch_size]]
        real = len(rows)
        rows += [jax.tree.map(np.zeros_like, rows[0])] * (batch_size - real)
        batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        batch["mask"] = np.arange(batch_size) < real
        yield batch
