"""YAML values into typed dataclasses: every key known, every value of its field's type and inside
its declared range (mimreg/bounds.py), with one-line errors naming the dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from mimreg.bounds import check_value
from mimreg.errors import ConfigError


def build_dataclass(cls: type, raw: Any, where: str):
    """Instantiate dataclass `cls` from a mapping, checking every key, value type and declared range."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown key {key!r}; valid keys are {sorted(fields)}"
                          + suggest(key, fields))
    values = {name: coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    for name, value in values.items():
        problem = check_value(fields[name], value, f"{where}.{name}")
        if problem:
            raise ConfigError(problem)
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from None


def coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if len(args) == 2 and type(None) in args:  # an optional value: that type's own message
            return coerce(next(a for a in args if a is not type(None)), value, where)
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(coerce(a, v, where) for a, v in zip(args, value))
        item = args[0] if args else Any
        return origin(coerce(item, v, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-3 without a dot as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
