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


class ConfigError(ValueError):
    """A config value that cannot work, caught before anything runs."""


# Counts that must be positive, and those where -1 means "derive it" (the rest must be positive).
_POSITIVE = ("batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps")
_POSITIVE_OR_MINUS_ONE = ("num_train_steps", "eval_every_steps")
_DATA_POSITIVE_OR_MINUS_ONE = ("max_train_examples", "max_eval_examples")


def check_run_config(config: Any) -> None:
    """Raises ConfigError naming every size, step count or epoch count that cannot work."""
    problems = [f"{name}={config[name]} must be > 0" for name in _POSITIVE if config[name] <= 0]
    problems += [
        f"{name}={config[name]} must be > 0 (or -1)"
        for name in _POSITIVE_OR_MINUS_ONE
        if config.get(name, -1) != -1 and config[name] <= 0
    ]
    problems += [
        f"data.{name}={config.data[name]} must be > 0 (or -1: all)"
        for name in _DATA_POSITIVE_OR_MINUS_ONE
        if config.data.get(name, -1) != -1 and config.data[name] <= 0
    ]
    if config.get("keep_checkpoints", 1) < 1:
        problems.append(f"keep_checkpoints={config.keep_checkpoints} must be >= 1")
    if config.get("keep_period", 0) < 0:
        problems.append(f"keep_period={config.keep_period} must be >= 0 (0: none)")
    if config.num_epochs <= 0 and config.num_train_steps == -1:
        problems.append(f"num_epochs={config.num_epochs} must be > 0 (or set num_train_steps)")
    elif config.num_epochs < 0:
        problems.append(f"num_epochs={config.num_epochs} must not be negative")
    if problems:
        raise ConfigError(f"Invalid config: {'; '.join(f'config.{p}' for p in problems)}.")
