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
A dataclass's own `problems()` (cross-field rules) yields `(field name, message)` pairs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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


def field(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    non_empty: bool = False,
    derived: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with an optional value check (applied to each element of a tuple).

    `derived` (for a nested dataclass) names its fields that the program sets, so that a config
    giving one is told so rather than silently overridden.
    """
    metadata = {_CHECK: check, _NON_EMPTY: non_empty, _DERIVED: derived}
    return dataclasses.field(default=default, metadata=metadata)


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
        problems = [f"{path}: {message}" for path, message in _instance_problems(self, "")]
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems))

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=kw_only)(cls)


def parse(cls: type[T], config: Mapping | Any, *, what: str | None = None) -> T:
    """`config` (a ConfigDict or mapping) as a `cls`; ConfigError listing every problem otherwise.

    `what` names the config in the error ("the vqhbr config").
    """
    raw = _as_mapping(config)
    problems: list[str] = []
    value = _build(cls, raw, "", problems, known_paths(cls))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {what or 'the ' + cls.__name__}:\n  " + "\n  ".join(problems))
    return value


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


def _build(cls: type, raw: Mapping, prefix: str, problems: list[str], known: list[str], derived=()):
    """The `cls` of `raw`, appending each problem to `problems` (then returning None)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(derived)
    count = len(problems)
    for key in sorted(set(raw) - names):
        if key in derived:
            problems.append(f"{prefix}{key}: set by the program (from the dataset or config.dtype), not by a config")
        else:
            problems.append(unknown_field_message(prefix + key, known))
    values = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{path}: missing")
            continue
        value = _value(_hints(cls)[f.name], raw[f.name], path, problems, known, f.metadata.get(_DERIVED, ()))
        if value is not _BAD:
            problems += [f"{p}: {message}" for p, message in _field_checks(f, value, path)]
        values[f.name] = value
    if len(problems) > count:
        return None
    instance: Any = object.__new__(cls)  # fields are all judged: skip __post_init__'s second look
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            object.__setattr__(instance, f.name, default)
    problems += [f"{prefix}{name}: {message}" for name, message in _cross_field(instance)]
    return None if len(problems) > count else instance


_BAD = object()


def _value(hint, value, path: str, problems: list[str], known: list[str], derived=()):
    """`value` checked against the type `hint`: the value to store, or _BAD after a problem."""
    if _is_optional(hint):
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    nested = _dataclass_of(hint)
    if nested is not None:
        if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
            problems.append(f"{path}: expected a group of fields, got {value!r}")
            return _BAD
        built = _build(nested, _as_mapping(value), path + ".", problems, known, derived)
        return _BAD if built is None else built
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (tuple, list)):
            problems.append(f"{path}: expected a tuple, got {type(value).__name__} {value!r}")
            return _BAD
        element = typing.get_args(hint)[0]
        items = [_value(element, v, f"{path}[{i}]", problems, known) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else tuple(items)
    if wrong := type_problem(value, hint):
        problems.append(f"{path}: {wrong}")
        return _BAD
    return float(value) if hint is float else value


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


def _field_checks(f: dataclasses.Field, value, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, tuple):
        if f.metadata.get(_NON_EMPTY) and not value:
            yield path, "must not be empty"
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(path, value)]
    check = f.metadata.get(_CHECK)
    if check is None:
        return
    for item_path, item in items:
        if item is not None and (bad := check(item)):
            yield item_path, f"{bad}, got {item!r}"


def _cross_field(instance) -> Iterator[tuple[str, str]]:
    rules = getattr(instance, "problems", None)
    return iter(rules()) if callable(rules) else iter(())


def _instance_problems(instance, prefix: str) -> Iterator[tuple[str, str]]:
    """The problems of an already-built instance (direct construction): types, checks, rules."""
    hints = _hints(type(instance))  # type: ignore[arg-type]  # a dataclass type is hashable
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        problems: list[str] = []
        if dataclasses.is_dataclass(value):
            continue  # a nested checked dataclass judged itself when it was built
        _value(hints[f.name], value, f.name, problems, [])
        for problem in problems:
            path, _, message = problem.partition(": ")
            yield prefix + path, message
        if not problems:
            yield from ((prefix + p, m) for p, m in _field_checks(f, value, f.name))
    yield from ((prefix + name, message) for name, message in _cross_field(instance))
