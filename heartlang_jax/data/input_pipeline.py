"""Building the TFDS datasets of `tfds_ptbxl` and serving them as grain batches.

Batch sizes here are global. Training iterators are infinite, shuffled anew each epoch from a
seed that every host shares, and checkpointable (`get_state`/`set_state`), so a resumed run sees
exactly the batches it would have seen. Each host reads only its own rows of every global batch
(`parallel.host_slice`), evaluation included, so 1 and N hosts see the same global batches.
Evaluation batches cover a split once, padded to a fixed shape with a `mask` so that the jitted
eval step compiles once. A `MixtureSource` (several datasets' examples) is drawn from in
proportion to its weights (`train_dataset`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from heartlang_jax.data import bundled_sample_dir
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
    if task is None:
        return np.arange(len(source))
    return np.asarray([i for i in range(len(source)) if np.any(source[i][task])], np.int64)


def label_fraction_subset(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratification-free random subset (the released code's 1%/10% protocol)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return indices
    count = max(1, round(fraction * len(indices)))
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
    indices: np.ndarray | None = None,
) -> grain.MapDataset:
    """Infinite, per-epoch reshuffled global batches, of which this host reads its own `rows`
    (default: `parallel.host_slice`, the rows its devices hold). `indices`: the examples to train
    on, when the caller has found them (else the labelled ones of `task`, at `label_fraction`).

    A `MixtureSource` is drawn from in proportion to its weights: each dataset is shuffled and
    repeated on its own (seeded by `seed` and its position), and grain's `MapDataset.mix`
    interleaves them deterministically, so every global batch holds each dataset's share up to
    rounding and a resumed iterator continues the same sequence. `index` is the example's index
    in the mixture (its datasets' examples in order), as the pre-training targets are stored.
    """
    if isinstance(source, MixtureSource):
        offsets = np.cumsum([0, *(len(p) for p in source.parts[:-1])])
        streams = []
        for i, (name, part, offset) in enumerate(zip(source.names, source.parts, offsets)):
            indices = label_fraction_subset(labelled_indices(part, task), label_fraction, seed)
            if not len(indices):
                raise ValueError(f"{name} has no training example (task={task}) to mix")
            part_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            streams.append(grain.MapDataset.source(indices + offset).shuffle(seed=part_seed).repeat(None))
        examples = grain.MapDataset.mix(streams, weights=source.weights)
    else:
        if indices is None:
            indices = label_fraction_subset(labelled_indices(source, task), label_fraction, seed)
        if len(indices) < global_batch:
            raise ValueError(
                f"{len(indices)} training examples (task={task}, label_fraction={label_fraction}) are fewer "
                f"than one global batch of {global_batch}; lower the batch size"
            )
        examples = grain.MapDataset.source(indices).shuffle(seed=seed).repeat(None)
    return examples.batch(global_batch, drop_remainder=True).map(
        _HostRows(_ToBatchFields(source, task), rows or parallel.host_slice(global_batch))
    )


def eval_batches(
    source: Sequence, *, global_batch: int, task: str | None = None, indices: np.ndarray | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the labelled examples (`indices`, found here when None) in fixed-size global
    batches; this host's rows of each.

    `mask` marks real rows. Every host yields the same number of batches (the jitted step is
    collective), and gathering the hosts' rows in process order gives the split's order.
    """
    if indices is None:
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
