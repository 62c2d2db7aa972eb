"""Numbers a config cannot mean are refused before anything runs, each named in one clause."""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import pytest

from beex_jax import config_fields
from configs import glue, pretrain, sweeps

REPO = pathlib.Path(__file__).resolve().parents[1]

NAN, INF = math.nan, math.inf

# (config, field, bad value, expected clause).
BAD_VALUES = [
    ("glue", "optim.learning_rate", -1.0, "optim.learning_rate=-1.0 must be > 0"),
    ("glue", "optim.learning_rate", 0.0, "optim.learning_rate=0.0 must be > 0"),
    ("glue", "optim.learning_rate", NAN, "optim.learning_rate=nan must be a finite number > 0"),
    ("glue", "optim.learning_rate", INF, "optim.learning_rate=inf must be a finite number > 0"),
    ("glue", "optim.warmup_fraction", 1.0, r"optim.warmup_fraction=1.0 must be in \[0, 1\)"),
    ("glue", "optim.warmup_fraction", -0.1, r"optim.warmup_fraction=-0.1 must be in \[0, 1\)"),
    ("glue", "optim.weight_decay", -0.01, "optim.weight_decay=-0.01 must be >= 0"),
    ("glue", "optim.weight_decay", NAN, "optim.weight_decay=nan must be a finite number >= 0"),
    ("glue", "optim.grad_clip_norm", -1.0, "optim.grad_clip_norm=-1.0 must be >= 0"),
    ("glue", "optim.body_lr_scale", -0.5, "optim.body_lr_scale=-0.5 must be >= 0"),
    ("glue", "optim.layer_decay", 0.0, r"optim.layer_decay=0.0 must be in \(0, 1\]"),
    ("glue", "optim.layer_decay", 1.5, r"optim.layer_decay=1.5 must be in \(0, 1\]"),
    ("glue", "optim.b1", 1.0, r"optim.b1=1.0 must be in \[0, 1\)"),
    ("glue", "optim.b2", NAN, r"optim.b2=nan must be a finite number in \[0, 1\)"),
    ("glue", "exit.delta", NAN, r"exit.delta=nan must be a finite number in \[0, 1\]"),
    ("glue", "exit.delta", -0.1, r"exit.delta=-0.1 must be in \[0, 1\]"),
    ("glue", "exit.delta", 1.5, r"exit.delta=1.5 must be in \[0, 1\]"),
    ("glue", "exit.min_exit_block", 0, "exit.min_exit_block=0 must be >= 1"),
    ("glue", "exit.entropy_threshold", -0.3, "exit.entropy_threshold=-0.3 must be >= 0"),
    ("glue", "exit.patience", 0, "exit.patience=0 must be >= 1"),
    ("glue", "exit.chunk_size", -1, "exit.chunk_size=-1 must be >= 0"),
    ("glue", "exit.chunk_tokens", 0, "exit.chunk_tokens=0 must be >= 1"),
    ("glue", "exit.min_chunks", 0, "exit.min_chunks=0 must be >= 1"),
    ("glue", "loss.tau", 0.0, "loss.tau=0.0 must be > 0"),
    ("glue", "loss.tau", NAN, "loss.tau=nan must be a finite number > 0"),
    ("glue", "loss.lam", -1.0, "loss.lam=-1.0 must be >= 0"),
    ("glue", "loss.label_smoothing", 1.0, r"loss.label_smoothing=1.0 must be in \[0, 1\)"),
    ("glue", "model.dropout_rate", 1.0, r"model.dropout_rate=1.0 must be in \[0, 1\)"),
    ("glue", "model.dropout_rate", NAN, r"model.dropout_rate=nan must be a finite number"),
    ("glue", "model.embedding_dropout_rate", -0.1, r"embedding_dropout_rate=-0.1 must be in"),
    ("glue", "model.num_layers", 0, "model.num_layers=0 must be >= 1"),
    ("glue", "model.hidden_dim", 0, "model.hidden_dim=0 must be >= 1"),
    ("glue", "model.num_heads", 0, "model.num_heads=0 must be >= 1"),
    ("glue", "model.num_heads", 3, "model.hidden_dim=32 must be divisible by model.num_heads=3"),
    ("glue", "model.slfn_dim", -64, "model.slfn_dim=-64 must be >= 1"),
    ("glue", "model.exit_dim", 0, "model.exit_dim=0 must be >= 1"),
    ("glue", "model.num_classes", 0, "model.num_classes=0 must be >= 1"),
    ("glue", "data.max_length", 0, "data.max_length=0 must be >= 1"),
    ("glue", "data.vocab_size", 0, "data.vocab_size=0 must be >= 1"),
    ("glue", "data.vocab_min_frequency", -1, "data.vocab_min_frequency=-1 must be >= 0"),
    ("glue", "data.word_dropout", 1.0, r"data.word_dropout=1.0 must be in \[0, 1\)"),
    ("glue", "data.bucket_window", 0, "data.bucket_window=0 must be >= 1"),
    ("glue", "data.prefetch", -1, "data.prefetch=-1 must be >= 0"),
    ("glue", "mesh.model_parallelism", 0, "mesh.model_parallelism=0 must be >= 1"),
    ("glue", "num_processes", 0, "num_processes=0 must be >= 1"),
    ("glue", "process_id", -1, "process_id=-1 must be >= 0"),
    ("glue", "init_from_step", -2, r"init_from_step=-2 must be >= 0 \(or -1: latest\)"),
    ("pretrain", "optim.learning_rate", -1e-3, "optim.learning_rate=-0.001 must be > 0"),
    ("pretrain", "mlm.mask_rate", 0.0, r"mlm.mask_rate=0.0 must be in \(0, 1\)"),
    ("pretrain", "mlm.mask_rate", NAN, r"mlm.mask_rate=nan must be a finite number"),
    ("pretrain", "mlm.mask_token_rate", 1.2, r"mlm.mask_token_rate=1.2 must be in \[0, 1\]"),
    ("pretrain", "mlm.mask_token_rate", 0.95, r"mask_token_rate \+ mlm.random_token_rate = 1.05"),
    ("pretrain", "mlm.random_token_rate", -0.1, r"mlm.random_token_rate=-0.1 must be in"),
    ("pretrain", "electra.generator_layers", 0, "electra.generator_layers=0 must be >= 1"),
    ("pretrain", "electra.rtd_weight", 0.0, "electra.rtd_weight=0.0 must be > 0"),
    ("pretrain", "electra.temperature", INF, "electra.temperature=inf must be a finite number"),
    ("pretrain", "word_vectors.window", 0, "word_vectors.window=0 must be >= 1"),
    ("pretrain", "word_vectors.negative", 0, "word_vectors.negative=0 must be >= 1"),
    ("pretrain", "word_vectors.epochs", 0, "word_vectors.epochs=0 must be >= 1"),
    ("pretrain", "word_vectors.min_count", -1, "word_vectors.min_count=-1 must be >= 0"),
    ("pretrain", "word_vectors.subsample", -1e-3, "word_vectors.subsample=-0.001 must be >= 0"),
    ("pretrain", "word_vectors.learning_rate", 0.0, "word_vectors.learning_rate=0.0 must be > 0"),
    ("pretrain", "word_vectors.workers", -1, "word_vectors.workers=-1 must be >= 0"),
]


def _config(kind: str, size: str = "tiny"):
    if kind == "glue":
        return glue.get_config(f"task=rte,size={size}").unlock()
    return pretrain.get_config(f"size={size}").unlock()


def _set(config, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value


@pytest.mark.parametrize(("kind", "field", "value", "message"), BAD_VALUES)
def test_a_number_out_of_range_is_a_config_error_naming_the_field(kind, field, value, message):
    config = _config(kind)
    _set(config, field, value)
    with pytest.raises(config_fields.ConfigError, match=message) as raised:
        config_fields.check_run_config(config)
    assert "\n" not in str(raised.value)
    assert str(raised.value).count("; ") == 0, str(raised.value)  # Only the one bad field.


def test_every_problem_is_named_in_one_line():
    config = _config("glue")
    config.optim.learning_rate = -1.0
    config.exit.delta = NAN
    config.batch_size = 0
    with pytest.raises(config_fields.ConfigError) as raised:
        config_fields.check_run_config(config)
    text = str(raised.value)
    assert "\n" not in text and text.count("; ") == 2
    for field in ("batch_size=0", "optim.learning_rate=-1.0", "exit.delta=nan"):
        assert f"config.{field} must be" in text


def test_every_checked_field_exists_in_a_config():
    """A misspelt NUMERIC_FIELDS entry would silently check nothing."""
    configs = [_config("glue"), _config("pretrain")]
    for path in config_fields.NUMERIC_FIELDS:
        assert any(config_fields._field(c, path) is not config_fields._MISSING for c in configs), (
            path
        )


def _leaves(node, prefix: str = "") -> dict:
    """Every non-section field of a config, by dotted path."""
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_float_field_of_the_configs_is_checked():
    """A float field added to a config without a range is caught here (NaN must be refused)."""
    unchecked = {
        path
        for config in (_config("glue"), _config("pretrain"))
        for path, value in _leaves(config).items()
        if isinstance(value, float) and path not in config_fields.NUMERIC_FIELDS
    }
    assert not unchecked, f"add a range to config_fields.NUMERIC_FIELDS: {sorted(unchecked)}"


@pytest.mark.parametrize("size", sorted(glue.SIZES))
def test_default_configs_pass(size):
    for task in glue.NUM_CLASSES:
        config_fields.check_run_config(glue.get_config(f"task={task},size={size}"))
    config_fields.check_run_config(pretrain.get_config(f"size={size}"))


def test_sweep_runs_pass():
    for name in sweeps.SWEEPS:
        for run in sweeps.get_sweep(name, "full"):
            config = glue.get_config(run.variant.split(":")[-1]).unlock()
            for key, value in run.overrides:
                _set(config, key, value)
            config_fields.check_ranges(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "clause"),
    [
        ("--config.optim.learning_rate=-1", "config.optim.learning_rate=-1.0 must be > 0"),
        ("--config.exit.delta=nan", "config.exit.delta=nan must be a finite number in [0, 1]"),
    ],
)
def test_command_line_ends_in_one_line(tmp_path, override, clause):
    workdir = tmp_path / "never"
    cmd = [sys.executable, "-m", "beex_jax.main", "--config", "configs/glue.py:task=sst2,size=tiny"]
    result = subprocess.run(
        [*cmd, "--workdir", str(workdir), override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"ERROR: Invalid config: {clause}."]
    assert not workdir.exists()
