"""The typed config of each stage: what a config file must hold, checked in one place.

The config files (`heartlang_jax/configs/*.py`) stay ml_collections ConfigDicts, so that any field
can be overridden on the command line. Each stage turns its ConfigDict into the dataclass below
first thing (`validate`), before it reads data or claims a workdir; a typo, a wrong type or a bad
value is then one line naming the field (see `typed_config`). The model blocks are the model
configs themselves (`ECGFormerConfig`, `VQHBRConfig`), whose checks are the ones that judge a
model built in a notebook; the fields a stage derives from the dataset (word length, sentence
length, dtype) are not set in a config file.

The pipeline and the sweep nest stage configs; a nested stage lacks the fields its parent sets
(`data`, the workdirs), hence the `*Fields` base classes.
"""

from __future__ import annotations

from typing import Literal

import ml_collections

from heartlang_jax import input_pipeline, typed_config
from heartlang_jax.errors import ConfigError
from heartlang_jax.models import ECGFormerConfig, VQHBRConfig
from heartlang_jax.typed_config import FRACTION, NON_NEGATIVE, POSITIVE, RATE, checked, field
from tfds_ptbxl import catalog

Split = Literal["train", "validation", "test"]
FinetuneMode = Literal["linear", "full"]
SweepInit = Literal["pretrained", "random"]


def _one_of_datasets(value) -> str | None:
    return None if value in catalog.DATASETS else f"must be one of {catalog.DATASETS}"


@checked(kw_only=True)
class ManualDirs:
    """Each dataset's folder in its own published layout (the TFDS manual_dir)."""

    ptbxl: str
    cpsc2018: str
    csn: str
    mimic_iv_ecg: str

    def problems(self):
        for name in catalog.DATASETS:
            if name != "ptbxl" and getattr(self, name) == input_pipeline.BUNDLED:
                yield name, f"{input_pipeline.BUNDLED!r} names the PTB-XL sample; give {name}'s own folder"


@checked(kw_only=True)
class DataConfig:
    # A TFDS builder of tfds_ptbxl (tfds_ptbxl/catalog.py).
    dataset: str = field(check=_one_of_datasets)
    manual_dirs: ManualDirs
    # "dataset:weight" entries (VQ-HBR and pre-training); () = `dataset` alone.
    mixture: tuple[str, ...]
    tfds_dir: str
    builder_config: str
    num_workers: int = field(check=NON_NEGATIVE)

    def problems(self):
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


def _no_mixture(data: DataConfig):
    if data.mixture:
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
class LoopFields:
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
class VQHBRModelBlock(VQHBRConfig):
    """`VQHBRConfig` as a config file holds it: the decoder's word length is code_dim, set by
    the stage, so the config's decoder block has none."""

    encoder: ECGFormerConfig = _encoder_block()
    decoder: ECGFormerConfig = _encoder_block()

    def problems(self):
        return iter(())


@checked(kw_only=True)
class PretrainModelBlock:
    encoder: ECGFormerConfig = _encoder_block()
    # Fraction of real words masked per sentence.
    mask_ratio: float = field(check=FRACTION)


@checked(kw_only=True)
class DatasetStage:
    stage: Literal["dataset"]
    data: DataConfig


@checked(kw_only=True)
class UnsupervisedFields(LoopFields):
    """What VQ-HBR and pre-training share beside their model."""

    seed: int
    # The dataset splits trained on (the others stay unseen; see configs/vqhbr.py).
    train_splits: tuple[Split, ...] = field(non_empty=True)
    optimizer: OptimizerConfig
    # Length buckets (heartlang_jax/packing.py; configs/common.py: length_bucket_config).
    length_bucket_step: int = field(default=0, check=NON_NEGATIVE)
    length_bucket_window: int = field(default=16, check=POSITIVE)


@checked(kw_only=True)
class VQHBRFields(UnsupervisedFields):
    stage: Literal["vqhbr"]
    model: VQHBRModelBlock

    def problems(self):
        if self.length_bucket_step and not self.model.encoder.mask_padding:
            yield (
                "length_bucket_step",
                "must be 0 when model.encoder.mask_padding is False: padding words are attended, so cutting "
                "them off would change every sentence",
            )


@checked(kw_only=True)
class VQHBRStage(VQHBRFields):
    data: DataConfig


@checked(kw_only=True)
class PretrainFields(UnsupervisedFields):
    stage: Literal["pretrain"]
    model: PretrainModelBlock

    def problems(self):
        if self.length_bucket_step and not self.model.encoder.mask_padding:
            yield (
                "length_bucket_step",
                "must be 0 when model.encoder.mask_padding is False: padding words are attended, so cutting "
                "them off would change every sentence",
            )


@checked(kw_only=True)
class PretrainStage(PretrainFields):
    data: DataConfig
    vqhbr_workdir: str


@checked(kw_only=True)
class FinetuneOptimizers:
    linear: OptimizerConfig
    full: LayerDecayOptimizerConfig


@checked(kw_only=True)
class FinetuneFields(LoopFields):
    """What every cell of a sweep shares (configs/sweep.py: `finetune`)."""

    encoder: ECGFormerConfig = _encoder_block()
    optimizer: FinetuneOptimizers


@checked(kw_only=True)
class FinetuneStage(FinetuneFields):
    stage: Literal["finetune"]
    data: DataConfig
    task: str
    mode: FinetuneMode
    label_fraction: float = field(check=FRACTION)
    seed: int
    init_workdir: str

    def problems(self):
        yield from _no_mixture(self.data)
        yield from _task_problems(self.data.dataset, "task", (self.task,))


@checked(kw_only=True)
class SweepFields:
    stage: Literal["sweep"]
    tasks: tuple[str, ...] = field(non_empty=True)
    label_fractions: tuple[float, ...] = field(check=FRACTION, non_empty=True)
    modes: tuple[FinetuneMode, ...] = field(non_empty=True)
    seeds: tuple[int, ...] = field(non_empty=True)
    inits: tuple[SweepInit, ...] = field(non_empty=True)
    keep_cell_checkpoints: bool
    finetune: FinetuneFields


@checked(kw_only=True)
class SweepStage(SweepFields):
    data: DataConfig
    init_workdir: str

    def problems(self):
        yield from _no_mixture(self.data)
        yield from _task_problems(self.data.dataset, "tasks", self.tasks)
        if "pretrained" in self.inits and not self.init_workdir:
            yield "init_workdir", "is empty but inits asks for pretrained cells"


@checked(kw_only=True)
class PipelineConfig:
    stage: Literal["pipeline"]
    data: DataConfig
    vqhbr: VQHBRFields
    pretrain: PretrainFields
    sweep: SweepFields

    def problems(self):
        yield from _task_problems(self.data.dataset, "sweep.tasks", self.sweep.tasks)


def _task_problems(dataset: str, name: str, tasks):
    known = catalog.tasks(dataset)
    for i, task in enumerate(tasks):
        if task not in known:
            where = name if name == "task" else f"{name}[{i}]"
            yield where, f"must be one of the tasks of {dataset} {known}, got {task!r}"


STAGES: dict[str, type] = {
    "dataset": DatasetStage,
    "vqhbr": VQHBRStage,
    "pretrain": PretrainStage,
    "finetune": FinetuneStage,
    "sweep": SweepStage,
    "pipeline": PipelineConfig,
}


def validate(config: ml_collections.ConfigDict):
    """The typed config of `config.stage`; ConfigError listing every problem otherwise."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"config.stage must be one of {sorted(STAGES)}, got {stage!r}")
    return typed_config.parse(STAGES[stage], config, what=f"the {stage} config")
