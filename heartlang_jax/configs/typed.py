"""Typed configs: the one way a config is checked.

Every config the project reads (a stage's run config, and the model sizes inside it) is a frozen
dataclass. Its fields carry their type, and a check wherever a value can be wrong in a way the
type does not say. `parse(cls, config)` builds one from an ml_collections ConfigDict (or a dict),
and `@checked` makes direct construction run the same checks, so a model config built in a
notebook is judged exactly as one read from a config file.

Every problem is reported at once, one line each, under its dotted field name: an unknown field
with a did-you-mean, a missing field, a wrong type, a bad value.

A field's type is one of bool, int, float (an int is a fine float; a bool is never a number),
str, a `Literal[...]` of choices, `tuple[T, ...]`, a nested checked dataclass, or `T | None`.
`field(check=...)` adds a value check: a function of the value returning None or what is wrong
("must be in (0, 1]"); on a tuple it judges each element, and `field(non_empty=True)` the tuple.
A dataclass's own `problems()` (cross-field rules) yields `(field name, message)` pairs, and its
classmethod `derive_fields(values)`, if any, sets what follows from its other fields once they are
read (VQ-HBR's decoder reads words of code_dim samples).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from heartlang_jax.errors import ConfigError

T = TypeVar("T")
Check = Callable[[Any], "str | None"]
_CHECK = "heartlang_jax.check"
_NON_EMPTY = "heartlang_jax.non_empty"
_DERIVED = "heartlang_jax.derived"
_KEYS = "heartlang_jax.keys"
_SET_BY_PARENT = "heartlang_jax.set_by_parent"
Problem = tuple[str, str]  # (dotted field path, what is wrong)


def field(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    non_empty: bool = False,
    derived: tuple[str, ...] = (),
    keys: Sequence[str] | None = None,
) -> Any:
    """A dataclass field with an optional value check (applied to each element of a tuple or
    each value of a dict).

    `derived` (for a nested dataclass) names its fields that the program sets, so that a config
    giving one is told so rather than silently overridden. `keys` (for a `dict[str, T]`) are the
    keys it must have, no more and no fewer.
    """
    metadata = {_CHECK: check, _NON_EMPTY: non_empty, _DERIVED: derived, _KEYS: tuple(keys) if keys else None}
    return dataclasses.field(default=default, metadata=metadata)


def set_by_parent(*, check: Check | None = None) -> Any:
    """A field a stage config must hold when it runs alone, and that a parent stage (the
    pipeline, the sweep) sets when it nests it: the parent lists it in its field's `derived`.
    Absent while nested (None), so the parent fills it in (`dataclasses.replace`) before use."""
    return dataclasses.field(default=None, metadata={_CHECK: check, _SET_BY_PARENT: True})


# --- value checks ---------------------------------------------------------------------------------


def in_range(low: float, high: float = float("inf"), *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return None
        left, right = "(" if low_open else "[", ")" if high_open or high == float("inf") else "]"
        return f"must be in {left}{low:g}, {high:g}{right}"

    return check


def POSITIVE(value) -> str | None:
    return None if value > 0 else "must be positive"


def NON_NEGATIVE(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


FRACTION = in_range(0, 1, low_open=True)  # (0, 1]
RATE = in_range(0, 1, high_open=True)  # [0, 1): betas, decays, dropout


# --- building and checking ------------------------------------------------------------------------


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field,))
def checked(cls: type[T] | None = None, *, kw_only: bool = False):
    """Class decorator: a frozen dataclass whose construction checks its fields (ConfigError)."""
    if cls is None:
        return functools.partial(checked, kw_only=kw_only)

    def __post_init__(self):
        problems = list(_instance_problems(self))
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(f"{p}: {m}" for p, m in problems))

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=kw_only)(cls)


def parse(cls: type[T], config: Mapping | Any, *, what: str | None = None) -> T:
    """`config` (a ConfigDict or mapping) as a `cls`; ConfigError listing every problem otherwise.

    `what` names the config in the error ("the vqhbr config").
    """
    raw = _as_mapping(config)
    problems: list[Problem] = []
    value = _build(cls, raw, "", problems, known_paths(cls))
    if problems:
        lines = [f"{path}: {message}" for path, message in problems]
        raise ConfigError(f"{len(lines)} problem(s) in {what or 'the ' + cls.__name__}:\n  " + "\n  ".join(lines))
    return value


def as_dict(config, derived: Sequence[str] = ()) -> dict[str, Any]:
    """A typed config in the shape of the config file it was read from, as plain JSON values:
    what `config.json` holds and `parse` reads back. Fields the program derives, and those a
    parent stage has not set yet, are left out, as a config file leaves them out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in derived or (value is None and f.metadata.get(_SET_BY_PARENT)):
            continue
        if dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value, f.metadata.get(_DERIVED, ()))
        else:
            out[f.name] = json.loads(json.dumps(value))
    return out


def known_paths(cls: type, prefix: str = "", derived: tuple[str, ...] = ()) -> list[str]:
    """Every dotted field path of `cls` a config may set, nested ones included."""
    paths = []
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        paths.append(prefix + f.name)
        nested = _dataclass_of(_hints(cls)[f.name])
        if nested is not None:
            paths += known_paths(nested, f"{prefix}{f.name}.", f.metadata.get(_DERIVED, ()))
    return paths


def unknown_field_message(path: str, known: Sequence[str]) -> str:
    return "{}: {}".format(*unknown_field(path, known))


def unknown_field(path: str, known: Sequence[str]) -> Problem:
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
        return path, f"unknown field; did you mean {' or '.join(close[:3])}?"
    if siblings:
        return path, f"unknown field; {parent or 'the config'} has {', '.join(siblings)}"
    return path, "unknown field"


def _as_mapping(config) -> Mapping:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_optional(hint) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]  # type: ignore[return-value]
    return None


def _is_optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _build(cls: type, raw: Mapping, prefix: str, problems: list[Problem], known: list[str], derived=()):
    """The `cls` of `raw`, appending each problem to `problems` (then returning None).

    `derived`: the fields the program (or a parent stage) sets, refused in `raw`."""
    names = {f.name for f in dataclasses.fields(cls)} - set(derived)
    count = len(problems)

    parent_set = {f.name for f in dataclasses.fields(cls) if f.metadata.get(_SET_BY_PARENT)}
    for key in sorted(set(raw) - names):
        if key in derived and key in parent_set:
            problems.append((prefix + key, "set by the enclosing stage for the stage it runs, not in this block"))
        elif key in derived:
            problems.append((prefix + key, "set by the program (from the dataset or config.dtype), not by a config"))
        else:
            problems.append(unknown_field(prefix + key, known))
    values = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if f.name not in raw:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required or (f.metadata.get(_SET_BY_PARENT) and f.name not in derived):
                problems.append((path, "missing"))
            continue
        value = _value(_hints(cls)[f.name], raw[f.name], path, problems, known, f.metadata)
        if value is not _BAD:
            problems += list(_field_checks(f, value, path))
        values[f.name] = value
    if len(problems) > count:
        return None
    derive = getattr(cls, "derive_fields", None)
    if derive is not None:  # what follows from this block's own values (in its nested blocks)
        values = derive(values)
    instance: Any = object.__new__(cls)  # fields are all judged: skip __post_init__'s second look
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            object.__setattr__(instance, f.name, default)
    problems += [(prefix + name, message) for name, message in _cross_field(instance)]
    return None if len(problems) > count else instance


_BAD = object()


def _value(
    hint, value, path: str, problems: list[Problem], known: list[str], metadata: Mapping = types.MappingProxyType({})
):
    """`value` checked against the type `hint`: the value to store, or _BAD after a problem.
    `metadata`: the field's (its `derived` names for a nested dataclass, its `keys` for a dict)."""
    if _is_optional(hint):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    nested = _dataclass_of(hint)
    if nested is not None:
        if dataclasses.is_dataclass(value) and isinstance(value, nested):
            return value  # already built (and judged) by a caller
        if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
            problems.append((path, f"expected a group of fields, got {value!r}"))
            return _BAD
        built = _build(nested, _as_mapping(value), path + ".", problems, known, metadata.get(_DERIVED, ()))
        return _BAD if built is None else built
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (tuple, list)):
            problems.append((path, f"expected a tuple, got {type(value).__name__} {value!r}"))
            return _BAD
        element = typing.get_args(hint)[0]
        items = [_value(element, v, f"{path}[{i}]", problems, known) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else tuple(items)
    if typing.get_origin(hint) is dict:
        return _dict_value(hint, value, path, problems, known, metadata.get(_KEYS))
    if wrong := type_problem(value, hint):
        problems.append((path, wrong))
        return _BAD
    return float(value) if hint is float else value


def _dict_value(hint, value, path: str, problems: list[Problem], known: list[str], keys: Sequence[str] | None):
    """A `dict[str, T]` field: a group whose keys are exactly `keys` (when given), values of T."""
    if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
        problems.append((path, f"expected a group of fields, got {value!r}"))
        return _BAD
    value = _as_mapping(value)
    count = len(problems)
    if keys is not None:
        allowed = [f"{path}.{k}" for k in keys]
        problems += [unknown_field(f"{path}.{k}", allowed) for k in sorted(set(value) - set(keys))]
        problems += [(f"{path}.{k}", "missing") for k in keys if k not in value]
    element = typing.get_args(hint)[1]
    items = {k: _value(element, v, f"{path}.{k}", problems, known) for k, v in value.items()}
    return _BAD if len(problems) > count else items


def type_problem(value, hint) -> str | None:
    """What is wrong with `value` as a `hint` (bool, int, float, str or a Literal), or None."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value in choices and type(value) is type(choices[0]):
            return None
        return (
            f"must be {choices[0]!r} here, got {value!r}"
            if len(choices) == 1
            else f"must be one of {choices}, got {value!r}"
        )
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # inf/nan pass every range check written as a comparison
            return f"must be a finite number, got {value!r}"
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"typed_config does not handle the field type {hint!r}")
    return None if ok else f"expected {hint.__name__}, got {type(value).__name__} {value!r}"


def _field_checks(f: dataclasses.Field, value, path: str) -> Iterator[Problem]:
    if isinstance(value, tuple):
        if f.metadata.get(_NON_EMPTY) and not value:
            yield path, "must not be empty"
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{path}.{k}", v) for k, v in value.items()]
    else:
        items = [(path, value)]
    check = f.metadata.get(_CHECK)
    if check is None:
        return
    for item_path, item in items:
        if item is not None and (bad := check(item)):
            yield item_path, f"{bad}, got {item!r}"


def _cross_field(instance) -> Iterator[Problem]:
    rules = getattr(instance, "problems", None)
    return iter(rules()) if callable(rules) else iter(())


def _instance_problems(instance) -> Iterator[Problem]:
    """The problems of an instance built directly (a notebook's model config, `dataclasses.replace`):
    types, value checks and cross-field rules; nested dataclasses judged themselves when built."""
    hints = _hints(type(instance))  # type: ignore[arg-type]  # a dataclass type is hashable
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if value is None and f.metadata.get(_SET_BY_PARENT):
            continue  # nested in a parent stage, which sets it before use
        problems: list[Problem] = []
        _value(hints[f.name], value, f.name, problems, [], f.metadata)
        yield from problems
        if not problems:
            yield from _field_checks(f, value, f.name)
    yield from _cross_field(instance)
