"""model.json, the model info of a run folder: the one module that writes and reads it.

The artifact has one name throughout: the file `model.json` (MODEL_INFO_FILE), this module
`model_info`, the class `ModelInfo`. It says what a run folder's model is, so that the folder
alone is enough to use it.

Every VQ-HBR, pre-training and fine-tuning run writes `<workdir>/model.json` beside its
`checkpoints/`: the model's architecture, how raw ECGs become its input (the sentence spec and
the amplitude standardization of its training data) and, for a classifier, its task and class
names. Nothing in it points at another folder, so a run folder copied to another machine or to
`gs://` loads on its own, and the next stage reads only the previous stage's folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
from flax import nnx

from heartlang_jax.models import VQHBR, EcgClassifier, ECGFormerConfig, MaskedEcgModel, VQHBRConfig
from heartlang_jax.models.ecgformer import RELEASED_BLOCK
from heartlang_jax.training import checkpointing

MODEL_INFO_FILE = "model.json"
# A pre-training run carries the vocabulary it learned to predict in this subfolder, itself a
# complete VQ-HBR run folder (model.json + a model-only checkpoint), so `word_ids` works on a copy.
VOCABULARY_DIR = "vocabulary"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The self-contained description of a run's model.

    `model` holds, per kind:
      vqhbr:    the VQHBRConfig fields, with `encoder` and `decoder` as ECGFormerConfig fields;
      pretrain: {"encoder": ECGFormerConfig fields, "vocab_size": K};
      finetune: {"encoder": ECGFormerConfig fields, "num_classes": C}.
    `sentence` is the dataset's sentence spec (leads, max_len, token_len, fs, detector) and
    `amplitude` its standardization {"mean", "std"} in mV, applied before tokenizing.
    """

    kind: str
    model: Mapping[str, Any]
    sentence: Mapping[str, Any]
    amplitude: Mapping[str, float]
    dataset: str
    task: str | None = None
    class_names: tuple[str, ...] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        from heartlang_jax.stages import MODEL_KINDS  # the stages whose run folders hold a model

        if self.kind not in MODEL_KINDS:
            raise checkpointing.CheckpointError(
                f"{MODEL_INFO_FILE}: kind must be one of {MODEL_KINDS}, got {self.kind!r}"
            )
        if self.kind == "finetune" and not self.class_names:
            raise checkpointing.CheckpointError(f"{MODEL_INFO_FILE}: a finetune run needs class_names")


def _json_ready(value):
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return value


def encoder_fields(config: ECGFormerConfig) -> dict:
    """An ECGFormerConfig as model.json stores it (the compute dtype is the loader's choice)."""
    fields = dataclasses.asdict(config)
    fields.pop("dtype", None)
    return fields


def vqhbr_fields(config: VQHBRConfig) -> dict:
    """A VQHBRConfig as model.json stores it."""
    fields = dataclasses.asdict(config)
    fields.update(encoder=encoder_fields(config.encoder), decoder=encoder_fields(config.decoder))
    return fields


def model_fields(kind: str, model: nnx.Module) -> dict:
    """The `model` entry of model.json for a built model of `kind` (see `ModelInfo`)."""
    if kind == "vqhbr":
        return vqhbr_fields(model.config)  # type: ignore[attr-defined]
    encoder = encoder_fields(model.encoder.config)  # type: ignore[attr-defined]
    if kind == "pretrain":
        return {"encoder": encoder, "vocab_size": int(model.lm_head.kernel.shape[1])}  # type: ignore[attr-defined]
    if kind == "finetune":
        return {"encoder": encoder, "num_classes": int(model.head.kernel.shape[1])}  # type: ignore[attr-defined]
    raise checkpointing.CheckpointError(f"{MODEL_INFO_FILE}: kind must be a stage that trains a model, got {kind!r}")


def write_model(
    workdir: str | os.PathLike,
    kind: str,
    model: nnx.Module,
    *,
    sentence: Mapping[str, Any],
    amplitude: Mapping[str, float],
    dataset: str,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
) -> ModelInfo:
    """Writes the model.json that describes `model` (process 0 only) and returns it."""
    info = ModelInfo(
        kind=kind,
        model=model_fields(kind, model),
        sentence=dict(sentence),
        amplitude=dict(amplitude),
        dataset=dataset,
        task=task,
        class_names=tuple(class_names) if class_names else None,
    )
    write(workdir, info)
    return info


def write(workdir: str | os.PathLike, info: ModelInfo) -> None:
    """Writes `model.json` atomically (process 0 only)."""
    checkpointing.atomic_write_text(
        epath.Path(workdir) / MODEL_INFO_FILE, json.dumps(_json_ready(info), indent=2, sort_keys=True)
    )


def read(workdir: str | os.PathLike) -> ModelInfo:
    path = epath.Path(workdir) / MODEL_INFO_FILE
    if not path.exists():
        raise checkpointing.CheckpointError(
            f"{path} not found: {workdir} is not a finished heartlang_jax vqhbr, pretrain or finetune run folder"
        )
    try:
        payload = json.loads(path.read_text())
    except ValueError as e:
        raise checkpointing.CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(payload, dict):
        raise checkpointing.CheckpointError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise checkpointing.CheckpointError(
            f"{path} has format_version {payload['format_version']}; this heartlang_jax reads <= {FORMAT_VERSION}"
        )
    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    unknown = sorted(set(payload) - fields)
    if unknown:
        raise checkpointing.CheckpointError(
            f"{path}: unknown field(s) {', '.join(unknown)}; it has {', '.join(sorted(fields))}"
        )
    missing = sorted(f for f in ("kind", "model", "sentence", "amplitude", "dataset") if f not in payload)
    if missing:
        raise checkpointing.CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    _check_amplitude(path, payload["amplitude"])
    if payload.get("class_names") is not None:
        payload["class_names"] = tuple(payload["class_names"])
    payload["model"] = _explicit_block_details(payload.get("model") or {})
    return ModelInfo(**payload)


def _explicit_block_details(model: Mapping[str, Any]) -> dict:
    """model.json files written before the released block details were explicit fields hold None
    (or nothing) for them, meaning "follow `position`": the released details with "learned",
    the defaults with "rope". Resolved here, so every reader sees the model they describe."""
    model = dict(model)
    for part in ("encoder", "decoder"):
        if not isinstance(model.get(part), Mapping):
            continue
        fields = dict(model[part])
        released = fields.get("position", "rope") == "learned"
        for name, released_value in RELEASED_BLOCK.items():
            if fields.get(name) is None:
                fields[name] = released_value if released else _ENCODER_DEFAULTS[name]
        model[part] = fields
    return model


_ENCODER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ECGFormerConfig)}


def _check_amplitude(path, amplitude) -> None:
    """The standardization every input goes through: a std of 0 or a NaN would make every input
    non-finite, and the fault is the model.json's, not the record's."""
    if not isinstance(amplitude, Mapping):
        raise checkpointing.CheckpointError(f"{path}: amplitude must be {{'mean': ..., 'std': ...}}, got {amplitude!r}")
    for key in ("mean", "std"):
        value = amplitude.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise checkpointing.CheckpointError(f"{path}: amplitude.{key} must be a finite number, got {value!r}")
    if not amplitude["std"] > 0:
        raise checkpointing.CheckpointError(f"{path}: amplitude.std must be positive, got {amplitude['std']!r}")


def encoder_config(fields: Mapping[str, Any], dtype: str | None = None) -> ECGFormerConfig:
    values = dict(fields)
    if dtype is not None:
        values["dtype"] = dtype
    return ECGFormerConfig(**values)


def vqhbr_config(fields: Mapping[str, Any], dtype: str | None = None) -> VQHBRConfig:
    values = dict(fields)
    values["encoder"] = encoder_config(values["encoder"], dtype)
    values["decoder"] = encoder_config(values["decoder"], dtype)
    return VQHBRConfig(**values)


def build_model(info: ModelInfo, *, dtype: str | None = None, seed: int = 0, **encoder_overrides) -> nnx.Module:
    """The (randomly initialized) model a run folder describes; restore its weights after.

    A `model` block that names an unknown field or a bad value is a CheckpointError naming model.json."""
    try:
        return _build_model(info, dtype=dtype, seed=seed, **encoder_overrides)
    except (TypeError, KeyError, ValueError) as e:  # ConfigError is a ValueError
        if isinstance(e, checkpointing.CheckpointError):
            raise
        raise checkpointing.CheckpointError(
            f"{MODEL_INFO_FILE}: its {info.kind} model block does not describe a model ({type(e).__name__}: {e})"
        ) from e


def _build_model(info: ModelInfo, *, dtype: str | None, seed: int, **encoder_overrides) -> nnx.Module:
    rngs = nnx.Rngs(seed)
    if info.kind == "vqhbr":
        return VQHBR(vqhbr_config(info.model, dtype), rngs=rngs)
    encoder = dataclasses.replace(encoder_config(info.model["encoder"], dtype), **encoder_overrides)
    if info.kind == "pretrain":
        return MaskedEcgModel(encoder, int(info.model["vocab_size"]), rngs=rngs)
    return EcgClassifier(encoder, int(info.model["num_classes"]), rngs=rngs)


def load_model(
    workdir: str | os.PathLike, *, dtype: str | None = None, expect_kind: str | None = None, **encoder_overrides
):
    """(ModelInfo, model restored from the newest checkpoint, its step) of a run folder."""
    info = read(workdir)
    if expect_kind is not None and info.kind != expect_kind:
        raise checkpointing.CheckpointError(f"{workdir} holds a {info.kind!r} run, expected a {expect_kind!r} run")
    what = f"{info.kind} checkpoint"
    # The stored shapes are checked against an abstract model first: a model.json describing a far
    # bigger model than the checkpoint holds is refused before its arrays are allocated.
    abstract = nnx.eval_shape(lambda: build_model(info, dtype=dtype, **encoder_overrides))
    try:
        steps = checkpointing.RunCheckpoints(workdir, read_only=True)
    except checkpointing.CheckpointError:
        newest = []  # load_model_from_run says what is missing
    else:
        try:
            newest = steps.steps()
        finally:
            steps.close()
    if newest:
        checkpointing.check_fits(workdir, newest[-1], abstract, what)
    model = build_model(info, dtype=dtype, **encoder_overrides)
    step = checkpointing.load_model_from_run(workdir, model, what=what)
    return info, model, step
