"""Checks a run's config against its stage's reference config before any compute.

A typo'd field (`model.num_codez`) or a wrong type would otherwise surface late, as an
AttributeError deep in a stage, or never (a field nobody reads); and a bad value that fails after
`checkpointing.claim_workdir` has recorded the config makes the workdir refuse the corrected one.
The reference of a stage is its default config file (`configs/vqhbr.py` for "vqhbr", ...); the
pipeline and sweep references nest the stage configs, so one tree walk covers them too.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
from absl import app, flags

from heartlang_jax.errors import ConfigError
from tfds_ptbxl import catalog

# stage -> module of its reference config (`get_config()` with no variant).
REFERENCE_CONFIGS = {
    "dataset": "heartlang_jax.configs.dataset",
    "vqhbr": "heartlang_jax.configs.vqhbr",
    "pretrain": "heartlang_jax.configs.pretrain_base",
    "finetune": "heartlang_jax.configs.finetune",
    "sweep": "heartlang_jax.configs.sweep",
    "pipeline": "heartlang_jax.configs.pipeline",
}
DTYPES = ("auto", "float32", "bfloat16")
# Blocks that become an `ECGFormerConfig`, which checks its own sizes, position and dropout.
_ENCODER_BLOCKS = ("encoder", "decoder")




def _finetune_modes() -> tuple[str, ...]:
    from heartlang_jax.stages import finetune

    return finetune.MODES


def _sweep_inits() -> tuple[str, ...]:
    from heartlang_jax import sweep

    return sweep.INITS


def _loss_weightings() -> tuple[str, ...]:
    from heartlang_jax.models import quantizer

    return quantizer.LOSS_WEIGHTINGS


def _one_of(choices: Callable[[], Sequence[str]]) -> Callable[[Any], str | None]:
    def check(value):
        allowed = tuple(choices())
        return None if value in allowed else f"must be one of {allowed}"

    return check


def _range(low: float, high: float = float("inf"), *, low_open: bool = False, high_open: bool = False):
    def check(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return None
        left, right = "(" if low_open else "[", ")" if high_open or high == float("inf") else "]"
        return f"must be in {left}{low:g}, {high:g}{right}"

    return check


_POSITIVE = _range(0, low_open=True)
_NON_NEGATIVE = _range(0)
_FRACTION = _range(0, 1, low_open=True)  # (0, 1]
_BETA = _range(0, 1, high_open=True)  # [0, 1)

# Value checks by field name, wherever the field sits (a stage config or one nested in the
# pipeline/sweep). Sequence fields are checked element by element.
_VALUE_RULES: dict[str, Callable[[Any], str | None]] = {
    "batch_size": _POSITIVE,
    "num_epochs": _POSITIVE,
    "log_every_steps": _POSITIVE,
    "warmup_epochs": _NON_NEGATIVE,
    "eval_every_steps": _NON_NEGATIVE,
    "checkpoint_every_steps": _NON_NEGATIVE,
    "num_workers": _NON_NEGATIVE,
    "num_codes": _POSITIVE,
    "code_dim": _POSITIVE,
    "kmeans_iters": _NON_NEGATIVE,
    "decay": _BETA,
    "commitment_weighting": _one_of(_loss_weightings),
    "mask_ratio": _FRACTION,
    "learning_rate": _POSITIVE,
    "end_learning_rate": _NON_NEGATIVE,
    "b1": _BETA,
    "b2": _BETA,
    "weight_decay": _NON_NEGATIVE,
    "grad_clip_norm": _NON_NEGATIVE,
    "layer_decay": _FRACTION,
    "label_fraction": _FRACTION,
    "label_fractions": _FRACTION,
    "dtype": _one_of(lambda: DTYPES),
    "mode": _one_of(_finetune_modes),
    "modes": _one_of(_finetune_modes),
    "inits": _one_of(_sweep_inits),
    "dataset": _one_of(lambda: catalog.DATASETS),
    "train_splits": _one_of(lambda: ("train", "validation", "test")),
}


def reference_config(stage: str) -> ml_collections.ConfigDict:
    """The default config of `stage`, the schema its run configs are checked against."""
    if stage not in REFERENCE_CONFIGS:
        raise ConfigError(f"config.stage must be one of {sorted(REFERENCE_CONFIGS)}, got {stage!r}")
    return importlib.import_module(REFERENCE_CONFIGS[stage]).get_config()


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every problem of `config`, each under its dotted field name."""
    try:
        reference = reference_config(config.get("stage"))
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("configs"):
            raise
        # Run outside the repository (configs/ is not installed): nothing to compare to.
        logging.warning("config not validated: the reference configs cannot be imported (%s)", e)
        return
    problems = list(_problems(config, reference, "", _dotted_paths(reference)))
    if not problems:  # the dataset's own choices, once the fields themselves are right
        problems = list(_dataset_problems(config, "", None))
    if problems:
        source = REFERENCE_CONFIGS[config.stage].replace(".", "/") + ".py"
        raise ConfigError(
            f"{len(problems)} problem(s) in the {config.stage} config (fields and types are those of "
            f"{source}):\n  " + "\n  ".join(problems)
        )


def _problems(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str, known: list[str]
) -> Iterator[str]:
    for key in sorted(config.keys()):
        path = prefix + key
        if key not in reference:
            yield unknown_field_message(path, known)
        else:
            yield from _field_problems(key, path, config[key], reference[key], known)
    for key in sorted(set(reference.keys()) - set(config.keys())):
        yield f"{prefix}{key}: missing"


def _field_problems(key: str, path: str, value: Any, expected: Any, known: list[str]) -> Iterator[str]:
    if isinstance(expected, ml_collections.ConfigDict):
        if not isinstance(value, ml_collections.ConfigDict):
            yield f"{path}: expected a group of fields, got {value!r}"
            return
        nested = list(_problems(value, expected, path + ".", known))
        yield from nested
        if key in _ENCODER_BLOCKS and not nested:
            yield from _encoder_problems(path, value)
        return
    if key == "stage":
        if value != expected:
            yield f"{path}: must be {expected!r} here, got {value!r}"
        return
    if isinstance(expected, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            yield f"{path}: expected a tuple, got {type(value).__name__} {value!r}"
            return
        if not value and expected:  # a field whose default is () may be empty
            yield f"{path}: must not be empty"
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        element = expected[0] if expected else None
    else:
        items = [(path, value)]
        element = expected
    for item_path, item in items:
        wrong = _type_problem(item, element)
        if wrong:
            yield f"{item_path}: {wrong}"
        elif key in _VALUE_RULES and (bad := _VALUE_RULES[key](item)):
            yield f"{item_path}: {bad}, got {item!r}"


def _dataset_problems(config: ml_collections.ConfigDict, prefix: str, dataset: str | None) -> Iterator[str]:
    """`data.builder_config`, `task` and `tasks` checked against the dataset in scope: a group's
    own `data.dataset`, else the nearest enclosing one (the pipeline's `data` serves its stages)."""
    if "data" in config:
        dataset = config.data.dataset
        configs = catalog.builder_configs(dataset)
        if config.data.builder_config not in configs:
            yield f"{prefix}data.builder_config: must be one of {configs} for {dataset}, got {config.data.builder_config!r}"
        yield from _data_sources_problems(config.data, f"{prefix}data.", config.get("stage"))
    for key in ("task", "tasks"):
        if key in config and dataset is not None:
            tasks = catalog.tasks(dataset)
            values = config[key] if key == "tasks" else (config[key],)
            for i, task in enumerate(values):
                if task not in tasks:
                    where = f"{prefix}{key}[{i}]" if key == "tasks" else prefix + key
                    yield f"{where}: must be one of the tasks of {dataset} {tasks}, got {task!r}"
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and key != "data":
            yield from _dataset_problems(value, f"{prefix}{key}.", dataset)


def _data_sources_problems(data: ml_collections.ConfigDict, prefix: str, stage: str | None) -> Iterator[str]:
    """`manual_dirs` ("bundled" is PTB-XL's sample) and `mixture` ("dataset:weight" entries of
    known datasets that have the builder config; read by VQ-HBR and pre-training only)."""
    from heartlang_jax import input_pipeline

    for name, folder in data.manual_dirs.items():
        if folder == input_pipeline.BUNDLED and name != "ptbxl":
            yield f"{prefix}manual_dirs.{name}: 'bundled' names the PTB-XL sample; give {name}'s own folder"
    if not data.mixture:
        return
    if stage in ("finetune", "sweep"):
        yield f"{prefix}mixture: must be () here; fine-tuning reads data.dataset (a mixture is for vqhbr and pretrain)"
        return
    try:
        entries = input_pipeline.parse_mixture(data.mixture)
    except ValueError as e:
        yield f"{prefix}mixture: {e}"
        return
    for i, (name, _) in enumerate(entries):
        if name not in catalog.DATASETS:
            yield f"{prefix}mixture[{i}]: {name!r} must be one of {catalog.DATASETS}"
        elif data.builder_config not in catalog.builder_configs(name):
            yield (
                f"{prefix}mixture[{i}]: {name} has no builder config {data.builder_config!r} "
                f"(data.builder_config); its configs are {catalog.builder_configs(name)}"
            )


def _type_problem(value: Any, expected: Any) -> str | None:
    """bool is never an int here; an int is a fine float."""
    if expected is None:
        return None
    if isinstance(expected, bool):
        ok = isinstance(value, bool)
    elif isinstance(expected, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(expected))
    return None if ok else f"expected {type(expected).__name__}, got {type(value).__name__} {value!r}"


def _encoder_problems(path: str, block: ml_collections.ConfigDict) -> Iterator[str]:
    from heartlang_jax.models import ECGFormerConfig

    try:
        ECGFormerConfig(**block.to_dict())
    except (TypeError, ValueError) as e:
        yield f"{path}: {e}"


def _dotted_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in config.items():
        paths.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            paths += _dotted_paths(value, f"{prefix}{key}.")
    return paths


def unknown_field_message(path: str, known: Sequence[str]) -> str:
    """Suggests the field of that name at another level (put in the wrong group), else the
    closest sibling (`num_code` -> `num_codes`), else a close field elsewhere, else the siblings."""
    parent, _, leaf = path.rpartition(".")
    siblings = sorted(p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == parent)
    close = [p for p in known if p.rpartition(".")[2] == leaf]
    close = close or [
        f"{parent}.{s}" if parent else s for s in difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    ]
    if not close:
        near = set(difflib.get_close_matches(leaf, {p.rpartition(".")[2] for p in known}, n=2, cutoff=0.8))
        close = sorted(p for p in known if p.rpartition(".")[2] in near)
    if close:
        return f"{path}: unknown field; did you mean {' or '.join(close[:3])}?"
    if siblings:
        return f"{path}: unknown field; {parent or 'the config'} has {', '.join(siblings)}"
    return f"{path}: unknown field"


# --- Command-line overrides ---------------------------------------------------------------------


def parse_flags(argv: list[str], flag_name: str = "config") -> list[str]:
    """`app.run`'s flags_parser: absl's, plus a clear error for an override of no field.

    ml_collections handles a wrong-typed override well ("flag --config.x=abc: invalid literal for
    int()"), but an override naming no field (`--config.model.num_codez=3`) escapes flag parsing
    as a bare KeyError/AttributeError with a traceback and only the last name.
    """
    from heartlang_jax import configs

    try:
        argv = _resolve_config_flag(argv, flag_name, configs.resolve_config_path)
    except configs.ConfigFileError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):
        config = flags.FLAGS[flag_name].parser.parse(_flag_value(argv, flag_name))
        problems = unknown_overrides(config, argv, flag_name)
        if not problems:
            raise
        sys.stderr.write("FATAL Flags parsing error: " + "; ".join(problems) + "\n")
        sys.exit(1)


def unknown_overrides(config: ml_collections.ConfigDict, argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """One message per `--<flag_name>.<path>` in `argv` whose path is no field of `config`."""
    known = _dotted_paths(config)
    problems = []
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{re.escape(flag_name)}\.([^=]+)", arg)
        if match and match.group(1) not in known:
            problems.append(f"--{flag_name}.{unknown_field_message(match.group(1), known)}")
    return problems


def _resolve_config_flag(argv: list[str], flag_name: str, resolve) -> list[str]:
    """Rewrites the `--config` value (either `--config=X` or `--config X`) to an existing file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in (f"--{flag_name}", f"-{flag_name}") and i + 1 < len(argv):
            argv[i + 1] = resolve(argv[i + 1])
        elif match := re.match(rf"^(--?{re.escape(flag_name)}=)(.*)$", arg):
            argv[i] = match.group(1) + resolve(match.group(2))
    return argv


def _flag_value(argv: Sequence[str], flag_name: str) -> str:
    for i, arg in enumerate(argv):
        if arg in (f"--{flag_name}", f"-{flag_name}") and i + 1 < len(argv):
            return argv[i + 1]
        if match := re.match(rf"^--?{re.escape(flag_name)}=(.*)$", arg):
            return match.group(1)
    raise ValueError(f"--{flag_name} not given")
