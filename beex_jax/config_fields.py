"""Typed views of `ml_collections` config sections: a dataclass built from a section's fields."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
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

# The ranges a number's meaning allows, by name; every value must also be finite (not NaN/inf).
_RANGES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1)": lambda v: 0 < v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
}
# Numeric fields of configs/glue.py and configs/pretrain.py and their ranges (a field a config
# does not have is skipped; None, an unset optional field, too).
NUMERIC_FIELDS: dict[str, str] = {
    # model: sizes and regularisation (docs/method.md §2).
    "model.num_layers": ">= 1",
    "model.hidden_dim": ">= 1",
    "model.num_heads": ">= 1",
    "model.slfn_dim": ">= 1",
    "model.exit_dim": ">= 1",  # model.max_length and model.vocab_size are data's (references).
    "model.type_vocab_size": ">= 1",
    "model.num_classes": ">= 1",
    "model.dropout_rate": "in [0, 1)",
    "model.embedding_dropout_rate": "in [0, 1)",
    # data.
    "data.vocab_size": ">= 1",
    "data.vocab_min_frequency": ">= 0",
    "data.max_length": ">= 1",
    "data.bucket_window": ">= 1",
    "data.prefetch": ">= 0",
    "data.word_dropout": "in [0, 1)",
    # exit: the rule and its baselines (docs/method.md §3); r_i <= 1, so delta above 1 is moot.
    "exit.delta": "in [0, 1]",
    "exit.min_exit_block": ">= 1",
    "exit.entropy_threshold": ">= 0",
    "exit.patience": ">= 1",
    "exit.chunk_size": ">= 0",
    "exit.chunk_tokens": ">= 1",
    "exit.min_chunks": ">= 1",
    "exit.tail_split": ">= 1",
    # loss (docs/method.md §4).
    "loss.tau": "> 0",
    "loss.lam": ">= 0",
    "loss.label_smoothing": "in [0, 1)",
    # optim (docs/method.md §5, §8): grad_clip_norm 0 turns clipping off; body_lr_scale 0
    # freezes the body.
    "optim.learning_rate": "> 0",
    "optim.warmup_fraction": "in [0, 1)",
    "optim.weight_decay": ">= 0",
    "optim.grad_clip_norm": ">= 0",
    "optim.body_lr_scale": ">= 0",
    "optim.layer_decay": "in (0, 1]",
    "optim.embedding_lr_scale": ">= 0",
    "optim.b1": "in [0, 1)",
    "optim.b2": "in [0, 1)",
    # pretraining objectives (docs/method.md §8).
    "mlm.mask_rate": "in (0, 1)",
    "mlm.mask_token_rate": "in [0, 1]",
    "mlm.random_token_rate": "in [0, 1]",
    "electra.generator_layers": ">= 1",
    "electra.rtd_weight": "> 0",
    "electra.temperature": "> 0",
    "word_vectors.window": ">= 1",
    "word_vectors.negative": ">= 1",
    "word_vectors.epochs": ">= 1",
    "word_vectors.min_count": ">= 0",
    "word_vectors.subsample": ">= 0",
    "word_vectors.learning_rate": "> 0",
    "word_vectors.workers": ">= 0",
    # runtime.
    "mesh.model_parallelism": ">= 1",
    "num_processes": ">= 1",
    "process_id": ">= 0",
}
_MISSING = object()


def _field(config: Any, path: str) -> Any:
    """config.a.b for path "a.b"; _MISSING where the config has no such field."""
    value = config
    for key in path.split("."):
        if not hasattr(value, "get") or key not in value:
            return _MISSING
        value = value[key]
    return value


def range_problems(config: Any) -> list[str]:
    """One clause per numeric field out of its range (NaN and infinities included)."""
    problems = []
    for path, allowed in NUMERIC_FIELDS.items():
        value = _field(config, path)
        if value is _MISSING or value is None:
            continue
        if not math.isfinite(value):
            problems.append(f"{path}={value} must be a finite number {allowed}")
        elif not _RANGES[allowed](value):
            problems.append(f"{path}={value} must be {allowed}")
    heads, width = _field(config, "model.num_heads"), _field(config, "model.hidden_dim")
    if _MISSING not in (heads, width) and heads >= 1 and width % heads:
        problems.append(f"model.hidden_dim={width} must be divisible by model.num_heads={heads}")
    replaced = [_field(config, f"mlm.{name}") for name in ("mask_token_rate", "random_token_rate")]
    if _MISSING not in replaced and all(0 <= r <= 1 for r in replaced) and sum(replaced) > 1:
        problems.append(
            f"mlm.mask_token_rate + mlm.random_token_rate = {sum(replaced):g} must be <= 1"
        )
    return problems


def check_run_config(config: Any) -> None:
    """Raises ConfigError naming every size, count, rate or other number that cannot work."""
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
    if config.get("init_from_step", -1) < -1:
        problems.append(f"init_from_step={config.init_from_step} must be >= 0 (or -1: latest)")
    _raise_if_any(problems + range_problems(config))


def check_ranges(config: Any) -> None:
    """Raises ConfigError naming every numeric field out of its range (`NUMERIC_FIELDS`)."""
    _raise_if_any(range_problems(config))


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"Invalid config: {'; '.join(f'config.{p}' for p in problems)}.")
