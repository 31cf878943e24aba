"""The stage skeleton every training stage runs through, right on one host or many.

A stage keeps only what is its own (its model, its loss and step, its evaluation); the rest is
here, once: claim the workdir, open the dataset, build the mesh and check the global batch
(`prepare`), then the schedule, the optimizer and the shared loop (`train`), and the run
folder's `model.json` that makes it usable on its own (`write_model_info`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
from etils import epath
from flax import nnx

from heartlang_jax import errors
from heartlang_jax.configs import schema, typed
from heartlang_jax.data import input_pipeline, packing, split_cache
from heartlang_jax.inference import model_info
from heartlang_jax.models import ECGFormerConfig
from heartlang_jax.training import checkpointing, optim, parallel, train_loop


def compute_dtype(config: schema.LoopConfig) -> str:
    """ "auto" = bfloat16 on GPU/TPU, float32 on CPU (where bf16 matmuls are emulated)."""
    if config.dtype != "auto":
        return config.dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def ecgformer_config(
    encoder: ECGFormerConfig, dtype: str, sentence: Mapping | None = None, **overrides
) -> ECGFormerConfig:
    """A config's encoder block completed with what the config does not set: the compute dtype,
    and the sentence length and word length of the dataset's `sentence` spec (ECGFormerConfig's
    defaults, 256 x 96, when None). `overrides` win."""
    derived: dict = {"dtype": dtype}
    if sentence is not None:
        derived.update(max_len=int(sentence["max_len"]), token_len=int(sentence["token_len"]))
    return dataclasses.replace(encoder, **{**derived, **overrides})


def tfds_dir(data: schema.DataConfig, workdir: str | os.PathLike) -> epath.Path:
    return epath.Path(data.tfds_dir) if data.tfds_dir else epath.Path(workdir) / "tfds"


def open_dataset(data: schema.DataConfig, workdir: str | os.PathLike, dataset: str | None = None):
    """Builds a dataset of `data` if needed: `data.dataset`, or `dataset` (one of `data.mixture`),
    from its folder `data.manual_dirs[name]`; returns (builder, {split: source}).

    Each source reads its split from a memory-mapped cache of the decoded columns
    (`split_cache.ColumnSource`, built on first use), so batches are gathered, not decoded."""
    name = dataset or data.dataset
    builder_kwargs: dict = {"allow_missing_records": data.allow_missing_records}
    if name == "csv":  # the records are where the CSV says; its builder config name carries its hash
        builder_kwargs.update(
            csv_path=os.path.abspath(data.csv),
            window_s=data.csv_window_s,
            stride_s=data.csv_stride_s,
            default_fs=data.csv_fs,
        )
    builder = input_pipeline.prepare_dataset(
        tfds_dir(data, workdir),
        dataset=name,
        builder_config=data.builder_config,
        manual_dir=data.manual_dirs.get(name) or None,
        num_workers=data.num_workers or None,
        builder_kwargs=builder_kwargs,
    )
    logging.info("%s", input_pipeline.summarize(builder))
    return builder, split_cache.cached_sources(builder)


def parameter_count(model: nnx.Module) -> int:
    """Trainable parameters (`nnx.Param`; the codebook and RNG state are not counted)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset must carry to read raw ECGs as that dataset did."""

    name: str
    sentence: dict
    amplitude: dict

    @classmethod
    def of(cls, builder) -> DatasetInfo:
        return cls(
            name=f"{builder.name}/{builder.builder_config.name}",
            sentence=input_pipeline.sentence_spec(builder),
            amplitude=dict(builder.info.metadata["amplitude"]),
        )


@dataclasses.dataclass(frozen=True)
class MixtureMember:
    """One dataset of `config.data.mixture`: its info, weight and {split: source}."""

    dataset: DatasetInfo
    weight: float
    sources: dict


@dataclasses.dataclass
class StageContext:
    """What `prepare` sets up for a stage: its workdir, data, mesh and batch sizes."""

    name: str
    config: Any  # the stage's typed config (configs/schema.py)
    workdir: epath.Path
    dataset: DatasetInfo
    sources: dict
    mesh: jax.sharding.Mesh
    global_batch: int
    mixture: tuple[MixtureMember, ...] = ()


def open_mixture(data: schema.DataConfig, workdir, primary: tuple[DatasetInfo, dict]) -> tuple[MixtureMember, ...]:
    """The datasets of `data.mixture`, each built if needed and checked to cut sentences as
    `primary` (`data.dataset`, whose validation split and amplitude the run keeps) does."""
    ref = primary[0]
    members = []
    for name, weight in input_pipeline.parse_mixture(data.mixture):
        if name == data.dataset:
            info, sources = primary
        else:
            builder, sources = open_dataset(data, workdir, name)
            info = DatasetInfo.of(builder)
        differ = sorted(
            k for k in info.sentence.keys() | ref.sentence.keys() if info.sentence.get(k) != ref.sentence.get(k)
        )
        if differ:
            details = "; ".join(f"{k}: {info.sentence.get(k)!r} vs {ref.sentence.get(k)!r}" for k in differ)
            raise errors.ConfigError(
                f"config.data.mixture: {info.name} cuts its sentences unlike {ref.name} ({details}); "
                "mix only datasets built with the same sentence spec"
            )
        members.append(MixtureMember(info, weight, sources))
    return tuple(members)


def train_source(ctx: StageContext, splits: Sequence[str]):
    """What a VQ-HBR or pre-training run trains on: `splits` of `config.data.dataset`, or, with
    a `config.data.mixture`, those splits of each of its datasets, drawn by weight; cut into
    host shards (`input_pipeline.HostShards`) when `config.train_shards` asks for them, or, at 0,
    when their cache is large (`input_pipeline.auto_shards`)."""
    source = _unsharded_train_source(ctx, splits)
    count = ctx.config.train_shards or input_pipeline.auto_shards(source, ctx.global_batch)
    if count == 1:
        return source
    try:
        sharded = input_pipeline.host_shards(source, count, ctx.global_batch)
    except ValueError as e:
        raise errors.ConfigError(f"config.train_shards: {e}") from None
    logging.info(
        "[%s] %d training examples in %d host shards; this host caches shards %d..%d (%.2f GB)",
        ctx.name,
        len(source),
        count,
        sharded.owned.start,
        sharded.owned.stop - 1,
        input_pipeline.cached_bytes(sharded.source) / 1e9,
    )
    return sharded


def _unsharded_train_source(ctx: StageContext, splits: Sequence[str]):
    if not ctx.mixture:
        return input_pipeline.concat_sources([ctx.sources[split] for split in splits])
    parts = []
    for member in ctx.mixture:
        missing = [split for split in splits if split not in member.sources]
        if missing:
            raise errors.ConfigError(
                f"config.train_splits: {member.dataset.name} has no {', '.join(missing)} split "
                f"(its splits: {', '.join(member.sources)})"
            )
        parts.append(input_pipeline.concat_sources([member.sources[split] for split in splits]))
    return input_pipeline.MixtureSource(
        tuple(parts), names=tuple(m.dataset.name for m in ctx.mixture), weights=tuple(m.weight for m in ctx.mixture)
    )


def prepare(
    name: str,
    config: Any,
    workdir: str | os.PathLike,
    identity_fields: Sequence[str],
    *,
    global_batch: int | None = None,
    data: tuple[DatasetInfo, dict] | None = None,
) -> StageContext:
    """Claims the workdir, opens the data (unless `data` = (DatasetInfo, sources) is given) and
    the datasets of `data.mixture`, builds the mesh and checks the global batch."""
    global_batch = config.batch_size if global_batch is None else global_batch
    parallel.check_global_batch(global_batch)
    workdir = checkpointing.absolute(workdir)
    checkpointing.claim_workdir(workdir, typed.as_dict(config), identity_fields)
    mixture = ()
    if data is None:
        builder, sources = open_dataset(config.data, workdir)
        data = (DatasetInfo.of(builder), sources)
        if config.data.mixture:
            mixture = open_mixture(config.data, workdir, data)
            members = ", ".join(f"{m.dataset.name} {m.weight:g}" for m in mixture)
            logging.info("[%s] training on the mixture %s; validating on %s", name, members, data[0].name)
            data = (dataclasses.replace(data[0], name=f"{data[0].name} (trained on the mixture {members})"), data[1])
    return StageContext(name, config, workdir, data[0], data[1], parallel.make_mesh(), global_batch, mixture)


def train(
    ctx: StageContext,
    *,
    model: nnx.Module,
    optimizer_config: schema.OptimizerConfig,
    train_step: Callable,
    train_data: grain.MapDataset,
    num_train_examples: int,
    wrt=nnx.Param,
    lr_scales=None,
    **loop_kwargs,
) -> train_loop.LoopResult:
    """The schedule (from the global batch), AdamW, and the shared loop."""
    if num_train_examples < ctx.global_batch:  # every batch would repeat examples within itself
        raise errors.ConfigError(
            f"config.batch_size: the global batch of {ctx.global_batch} is larger than the "
            f"{num_train_examples} training examples of {ctx.dataset.name}; lower batch_size"
        )
    schedule = train_loop.Schedule.from_config(ctx.config, num_train_examples, ctx.global_batch)
    logging.info("[%s] %s parameters", ctx.name, f"{parameter_count(model):,}")
    tx = optim.make_optimizer(
        optimizer_config,
        num_train_steps=schedule.num_train_steps,
        warmup_steps=schedule.warmup_steps,
        lr_scales=lr_scales,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    result = train_loop.run(
        stage=ctx.name,
        config=ctx.config,
        workdir=os.fspath(ctx.workdir),
        model=model,
        optimizer=optimizer,
        train_step=train_step,
        train_data=train_data,
        mesh=ctx.mesh,
        schedule=schedule,
        **loop_kwargs,
    )
    logging.info("[%s] done at step %d: %s", ctx.name, result.step, result.last_eval)
    return result


def unsupervised_train_data(ctx: StageContext, source) -> grain.MapDataset:
    """VQ-HBR's and pre-training's training batches: length-bucketed when the config's
    length_bucket_step > 0 (heartlang_jax/packing.py; mixtures are not bucketed)."""
    config = ctx.config
    step = config.length_bucket_step
    lengths = None
    sharded = isinstance(source, input_pipeline.HostShards)
    if step > 0 and not isinstance(source.source if sharded else source, input_pipeline.MixtureSource):
        lengths = source.real_lengths() if sharded else packing.real_lengths(source)
        logging.info("[%s] length buckets of %d words over %d sentences", ctx.name, step, len(lengths))
    return input_pipeline.train_dataset(
        source,
        global_batch=ctx.global_batch,
        seed=config.seed,
        lengths=lengths,
        bucket_step=step,
        bucket_window=config.length_bucket_window,
    )


def trim_to_bucket(batch: dict) -> dict:
    """A training batch cut to its length bucket, if it has one (the stages' prepare_batch hook)."""
    if packing.BUCKET_KEY in batch:
        return packing.trim(batch, int(batch[packing.BUCKET_KEY]))
    return batch


def write_model_info(ctx: StageContext, kind: str, model: nnx.Module, **extra) -> None:
    """The run folder's `model.json`: all that loading the model for inference needs."""
    model_info.write_model(
        ctx.workdir,
        kind,
        model,
        sentence=ctx.dataset.sentence,
        amplitude=ctx.dataset.amplitude,
        dataset=ctx.dataset.name,
        **extra,
    )
