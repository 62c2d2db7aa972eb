"""Typed views of `ml_collections` config sections: a dataclass built from a section's fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_section(cls: type[T], section: Any, section_name: str) -> T:
    """Builds dataclass `cls` from a ConfigDict section or mapping; unknown keys are an error."""
    values = dict(section.items()) if hasattr(section, "items") else section
    if not isinstance(values, Mapping):
        raise TypeError(f"config.{section_name} must be a mapping, got {type(section).__name__}.")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown {section_name} config keys {unknown}; valid: {sorted(names)}.")
    return cls(**values)
