"""The typed config of each stage: what a config file must hold, checked once, read by everything.

The config files (`heartlang_jax/configs/*.py`) stay ml_collections ConfigDicts, so that any field
can be overridden on the command line. `validate` turns one into the dataclass of its stage (the
stage table, `heartlang_jax.stages.STAGES`, says which) before any data is read or workdir claimed;
a typo, a wrong type or a bad value is then one line naming the field (see `typed`). Below that,
code reads only the typed object, and a run's `config.json` is written from it.

The model blocks are the model configs themselves (`ECGFormerConfig`, `VQHBRConfig`), whose checks
are the ones that judge a model built in a notebook; the fields a stage derives from the dataset
(word length, sentence length, dtype) are not set in a config file.

The pipeline and the sweep nest stage configs. A nested stage lacks the fields its parent sets
(`data`, the workdirs, a sweep cell's task and seed): those are `set_by_parent()` fields, required
when the stage runs alone, refused in the nested block (its parent lists them as `derived`), and
filled in by the parent with `dataclasses.replace` before it runs the stage.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from heartlang_jax.configs import typed
from heartlang_jax.configs.typed import FRACTION, NON_NEGATIVE, POSITIVE, RATE, checked, field, set_by_parent
from heartlang_jax.data import input_pipeline
from heartlang_jax.ecg.sentence_spec import SentenceSpec
from heartlang_jax.errors import ConfigError
from heartlang_jax.models import ECGFormerConfig, VQHBRConfig
from tfds_ptbxl import catalog

Split = Literal["train", "validation", "test"]
FinetuneMode = Literal["linear", "full"]
SweepInit = Literal["pretrained", "random"]


def _one_of_datasets(value) -> str | None:
    return None if value in catalog.DATASETS else f"must be one of {catalog.DATASETS}"


@checked(kw_only=True)
class DataConfig:
    # A TFDS builder of tfds_ptbxl (tfds_ptbxl/catalog.py).
    dataset: str = field(check=_one_of_datasets)
    # Each dataset's folder in its own published layout (the TFDS manual_dir), by dataset name.
    manual_dirs: dict[str, str] = field(keys=catalog.FOLDER_DATASETS)
    # "dataset:weight" entries (VQ-HBR and pre-training); () = `dataset` alone.
    mixture: tuple[str, ...]
    tfds_dir: str
    builder_config: str
    num_workers: int = field(check=NON_NEGATIVE)
    # Build from a partial copy of a dataset, without the records its folder lacks (each logged).
    allow_missing_records: bool = False
    # dataset="csv": the CSV of records and labels (tfds_ptbxl/csv_labels); its rows' records are
    # cut into windows of csv_window_s seconds every csv_stride_s seconds (0 = the sentence's
    # 10 s window, 0 = no overlap); csv_fs is the rate of `.npy` records without an `fs` column.
    csv: str = ""
    csv_window_s: float = field(default=0.0, check=NON_NEGATIVE)
    csv_stride_s: float = field(default=0.0, check=NON_NEGATIVE)
    csv_fs: float = field(default=0.0, check=NON_NEGATIVE)

    def problems(self):
        if self.dataset == "csv" and not self.csv:
            yield "csv", "is empty; data.dataset='csv' reads the CSV it names (--config.data.csv=PATH)"
        if self.dataset != "csv" and self.csv:
            yield "csv", f"names a CSV but data.dataset={self.dataset!r}; set data.dataset='csv' to read it"
        if self.csv_window_s > SentenceSpec().max_duration_s:
            yield "csv_window_s", f"must be at most a sentence's {SentenceSpec().max_duration_s:g} s (0 = that)"
        if "csv" in self.mixture_names():
            yield "mixture", "cannot hold 'csv' (a CSV dataset is for fine-tuning and the sweep)"
        for name, folder in self.manual_dirs.items():
            if name != "ptbxl" and folder == input_pipeline.BUNDLED:
                yield (
                    f"manual_dirs.{name}",
                    f"{input_pipeline.BUNDLED!r} names the PTB-XL sample; give {name}'s own folder",
                )
        configs = catalog.builder_configs(self.dataset)
        if self.builder_config not in configs:
            yield "builder_config", f"must be one of {configs} for {self.dataset}, got {self.builder_config!r}"
        if not self.mixture:
            return
        try:
            entries = input_pipeline.parse_mixture(self.mixture)
        except ValueError as e:
            yield "mixture", str(e)
            return
        for i, (name, _) in enumerate(entries):
            if name not in catalog.DATASETS:
                yield f"mixture[{i}]", f"{name!r} must be one of {catalog.DATASETS}"
            elif self.builder_config not in catalog.builder_configs(name):
                yield (
                    f"mixture[{i}]",
                    f"{name} has no builder config {self.builder_config!r} (data.builder_config); "
                    f"its configs are {catalog.builder_configs(name)}",
                )

    def mixture_names(self) -> list[str]:
        try:
            return [name for name, _ in input_pipeline.parse_mixture(self.mixture)]
        except ValueError:
            return []

    def datasets(self) -> list[str]:
        """`dataset`, then the other datasets of `mixture`."""
        return [self.dataset, *(n for n, _ in input_pipeline.parse_mixture(self.mixture) if n != self.dataset)]


def _no_mixture(data: DataConfig | None):
    if data is not None and data.mixture:
        yield "data.mixture", "must be () here; fine-tuning reads data.dataset (a mixture is for vqhbr and pretrain)"


@checked(kw_only=True)
class OptimizerConfig:
    learning_rate: float = field(check=POSITIVE)
    end_learning_rate: float = field(check=NON_NEGATIVE)
    b1: float = field(check=RATE)
    b2: float = field(check=RATE)
    weight_decay: float = field(check=NON_NEGATIVE)
    grad_clip_norm: float = field(check=NON_NEGATIVE)


@checked(kw_only=True)
class LayerDecayOptimizerConfig(OptimizerConfig):
    # Learning-rate factor per layer below the top (1 = none).
    layer_decay: float = field(check=FRACTION)


@checked(kw_only=True)
class LoopConfig:
    """The training-loop fields of every training stage (configs/common.py: loop_config)."""

    batch_size: int = field(check=POSITIVE)
    num_epochs: int = field(check=POSITIVE)
    warmup_epochs: int = field(check=NON_NEGATIVE)
    num_train_steps: int
    log_every_steps: int = field(check=POSITIVE)
    eval_every_steps: int = field(check=NON_NEGATIVE)
    checkpoint_every_steps: int = field(check=NON_NEGATIVE)
    dtype: Literal["auto", "float32", "bfloat16"]


# An ECGFormer block of a config file: ECGFormerConfig less what the stage derives.
def _encoder_block(**kwargs):
    return field(**kwargs, derived=ECGFormerConfig.DERIVED)


@checked(kw_only=True)
class PretrainModelBlock:
    encoder: ECGFormerConfig = _encoder_block()
    # Fraction of real words masked per sentence.
    mask_ratio: float = field(check=FRACTION)


@checked(kw_only=True)
class DatasetStage:
    stage: str
    data: DataConfig


@checked(kw_only=True)
class UnsupervisedStage(LoopConfig):
    """What VQ-HBR and pre-training share beside their model."""

    stage: str
    seed: int
    # The dataset splits trained on (the others stay unseen; see configs/vqhbr.py).
    train_splits: tuple[Split, ...] = field(non_empty=True)
    # Host shards of the training examples (configs/common.py: train_examples_config); 0 = automatic.
    train_shards: int = field(default=0, check=NON_NEGATIVE)
    optimizer: OptimizerConfig
    data: DataConfig = set_by_parent()
    # Length buckets (heartlang_jax/data/packing.py; configs/common.py: length_bucket_config).
    length_bucket_step: int = field(default=0, check=NON_NEGATIVE)
    length_bucket_window: int = field(default=16, check=POSITIVE)

    def problems(self):
        if self.train_shards and self.batch_size % self.train_shards:
            yield "train_shards", f"must divide batch_size ({self.batch_size}), got {self.train_shards}"
        if self.length_bucket_step and not self.model.encoder.mask_padding:
            yield (
                "length_bucket_step",
                "must be 0 when model.encoder.mask_padding is False: padding words are attended, so cutting "
                "them off would change every sentence",
            )


@checked(kw_only=True)
class VQHBRStage(UnsupervisedStage):
    model: VQHBRConfig


@checked(kw_only=True)
class PretrainStage(UnsupervisedStage):
    model: PretrainModelBlock
    vqhbr_workdir: str = set_by_parent()


@checked(kw_only=True)
class FinetuneOptimizers:
    linear: OptimizerConfig
    full: LayerDecayOptimizerConfig

    def of(self, mode: str) -> OptimizerConfig:
        return self.linear if mode == "linear" else self.full


POS_WEIGHT_CHOICES = ("none", "balanced")


def parse_pos_weight(value: str) -> str | tuple[float, ...]:
    """`model.pos_weight`: "none", "balanced", or comma-separated floats (one per class)."""
    if value in POS_WEIGHT_CHOICES:
        return value
    try:
        weights = tuple(float(w) for w in value.replace(" ", "").strip("()[]").split(","))
    except ValueError:
        weights = ()
    if not weights or not all(w > 0 and w < float("inf") for w in weights):
        raise ValueError(
            "must be 'none', 'balanced' or positive weights separated by commas, one per class (e.g. '1,4.5,2')"
        )
    return weights


def _pos_weight_problem(value: str) -> str | None:
    try:
        parse_pos_weight(value)
    except ValueError as e:
        return str(e)
    return None


@checked(kw_only=True)
class FinetuneModelBlock:
    # Weight of each class's positive term in the BCE: "none" (the plain mean BCE), "balanced"
    # (n_negative / n_positive of each class among the training examples; 1 for a class with no
    # positive) or comma-separated floats, one per class.
    pos_weight: str = field(default="none", check=_pos_weight_problem)


# The fields of a fine-tuning config that each sweep cell sets (configs/sweep.py: PER_CELL_FIELDS).
FINETUNE_CELL_FIELDS = ("stage", "data", "task", "mode", "label_fraction", "seed", "init_workdir")


@checked(kw_only=True)
class FinetuneStage(LoopConfig):
    encoder: ECGFormerConfig = _encoder_block()
    optimizer: FinetuneOptimizers
    model: FinetuneModelBlock = field(default=FinetuneModelBlock())
    stage: str = set_by_parent()
    data: DataConfig = set_by_parent()
    task: str = set_by_parent()
    mode: FinetuneMode = set_by_parent()
    label_fraction: float = set_by_parent(check=FRACTION)
    seed: int = set_by_parent()
    init_workdir: str = set_by_parent()

    @classmethod
    def derive_fields(cls, values: dict) -> dict:
        if values.get("data") is not None and isinstance(values.get("task"), str):
            return {**values, "task": resolve_tasks(values["data"].dataset, (values["task"],))[0]}
        return values

    def problems(self):
        yield from _no_mixture(self.data)
        if self.data is not None and self.task is not None:
            yield from _task_problems(self.data.dataset, "task", (self.task,))


@checked(kw_only=True)
class SweepStage:
    stage: str
    tasks: tuple[str, ...] = field(non_empty=True)
    label_fractions: tuple[float, ...] = field(check=FRACTION, non_empty=True)
    modes: tuple[FinetuneMode, ...] = field(non_empty=True)
    seeds: tuple[int, ...] = field(non_empty=True)
    inits: tuple[SweepInit, ...] = field(non_empty=True)
    keep_cell_checkpoints: bool
    # What every cell shares; the sweep sets the rest per cell.
    finetune: FinetuneStage = field(derived=FINETUNE_CELL_FIELDS)
    data: DataConfig = set_by_parent()
    init_workdir: str = set_by_parent()

    @classmethod
    def derive_fields(cls, values: dict) -> dict:
        if values.get("data") is not None:
            return {**values, "tasks": resolve_tasks(values["data"].dataset, values["tasks"])}
        return values

    def problems(self):
        yield from _no_mixture(self.data)
        if self.data is not None:
            yield from _task_problems(self.data.dataset, "tasks", self.tasks)
        if "pretrained" in self.inits and self.init_workdir == "":
            yield "init_workdir", "is empty but inits asks for pretrained cells"


@checked(kw_only=True)
class PipelineStage:
    stage: str
    data: DataConfig
    vqhbr: VQHBRStage = field(derived=("data",))
    pretrain: PretrainStage = field(derived=("data", "vqhbr_workdir"))
    sweep: SweepStage = field(derived=("data", "init_workdir"))

    @classmethod
    def derive_fields(cls, values: dict) -> dict:
        sweep = values["sweep"]
        return {**values, "sweep": dataclasses.replace(sweep, tasks=resolve_tasks(values["data"].dataset, sweep.tasks))}

    def problems(self):
        for name in ("vqhbr", "pretrain", "sweep"):  # each nested block is the config of that stage
            if getattr(self, name).stage != name:
                yield f"{name}.stage", f"must be {name!r} here, got {getattr(self, name).stage!r}"
        yield from _task_problems(self.data.dataset, "sweep.tasks", self.sweep.tasks)


# `task="default"`: the dataset's first task (PTB-XL's superdiagnostic; a CSV's classes), so
# one fine-tuning command serves every dataset; `tasks=("all",)`: every task of the dataset, in
# its order (PTB-XL's four). Resolved when the config is read: config.json holds the names.
DEFAULT_TASK = "default"
ALL_TASKS = "all"


def resolve_tasks(dataset: str, tasks) -> tuple[str, ...]:
    """`tasks` with DEFAULT_TASK and ALL_TASKS replaced by the tasks of `dataset`."""
    known = catalog.tasks(dataset) if dataset in catalog.DATASETS else ()
    out: list[str] = []
    for task in tasks:
        if task == ALL_TASKS and known:
            out += known
        elif task == DEFAULT_TASK and known:
            out.append(known[0])
        else:
            out.append(task)
    return tuple(out)


def _task_problems(dataset: str, name: str, tasks):
    known = catalog.tasks(dataset)
    for i, task in enumerate(tasks):
        if task not in known:
            where = name if name == "task" else f"{name}[{i}]"
            if dataset == "csv":
                yield (
                    where,
                    f"a csv dataset has one task, {known[0]!r}: the class columns (or `labels`) of its CSV; "
                    f"superdiagnostic, subdiagnostic, form and rhythm are PTB-XL's. Set it to {known[0]!r}, got {task!r}",
                )
            else:
                yield where, f"must be one of the tasks of {dataset} {known}, got {task!r}"


def validate(config):
    """The typed config of `config.stage` (a ConfigDict or mapping); ConfigError listing every
    problem otherwise. An already typed config is returned as it is (it was judged when built)."""
    from heartlang_jax import stages  # the stage table names the schema of each stage

    if dataclasses.is_dataclass(config):
        return config
    stage = config.get("stage") if hasattr(config, "get") else None
    if stage not in stages.STAGES:
        raise ConfigError(f"config.stage must be one of {sorted(stages.STAGES)}, got {stage!r}")
    return typed.parse(stages.STAGES[stage].schema, config, what=f"the {stage} config")
