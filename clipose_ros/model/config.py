"""Strict construction of the model's config dataclasses from YAML / checkpoint sections."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any], label: str) -> T:
    """``cls(**d)``, refusing keys the dataclass does not have (a typo in a config file must not
    silently fall back to a default); ``label`` names the section in the error."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{label}: unknown keys {sorted(unknown)}")
    return cls(**d)
