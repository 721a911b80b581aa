"""Strict construction of the config dataclasses from YAML / checkpoint sections.

One reader for every section (training YAML, node parameters read from checkpoints, exported
model metadata): a key the dataclass does not have, or a value of the wrong type, is refused
with the section and key named, because a typo must not silently fall back to a default.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config section that cannot be used (the message names the section and key)."""


def _accepts(hint: Any, value: Any) -> tuple[bool, Any]:
    """(fits, value converted) for a value of a dataclass field with type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, converted = _accepts(option, value)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is Any:
        return True, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        converted = []
        for i, item in enumerate(value):
            ok, c = _accepts(args[min(i, len(args) - 1)], item) if args else (True, item)
            if not ok:
                return False, value
            converted.append(c)
        return True, origin(converted)
    return True, value


def typed_from_dict(cls: type[T], d: Mapping[str, Any] | None, label: str) -> T:
    """``cls(**d)`` with unknown keys and wrongly typed values refused (ints become floats
    where a float is wanted); missing keys take the dataclass defaults."""
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {label!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"config section {label!r}: unknown keys {unknown}")
    values = {}
    for key, value in d.items():
        ok, converted = _accepts(hints[key], value)
        if not ok:
            raise ConfigError(
                f"config {label}.{key} = {value!r}: expected {_describe(hints[key])}"
            )
        values[key] = converted
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section {label!r}: {err}") from err


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any], label: str) -> T:
    """:func:`typed_from_dict` under the name the module dataclasses' ``from_dict`` use."""
    return typed_from_dict(cls, d, label)
