"""Command line: `python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2`.

Any config field can be overridden (`--config.model.num_layers=4`); unknown fields and values of
the wrong type are rejected before anything runs.

  --mode=pretrain --config configs/pretrain.py --workdir W
      MLM pretraining of the body on unlabeled text (`beex_jax.pretrain.pretrain`); fine-tune
      from it with `--config.init_from=W`.

  --mode=predict --workdir W --input F --output O [--skip_bad_lines]
      predictions of the model in W (a training workdir or an export) for every line of F, as
      JSON lines (`beex_jax.predict.predict`); --config is optional, and if given its `exit`
      section replaces the model's (e.g. `--config.exit.delta=0.2`).
  --mode=export --workdir W [--export_dir D]
      the packed 1-bit model of W's best checkpoint in D (default W/export), with its size
      report (`beex_jax.export.export`).
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from beex_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/glue.py:task=...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and config.json.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "pretrain", "predict", "export"], "What to do."
)
_INPUT = flags.DEFINE_string(
    "input", None, "predict: .tsv, .jsonl or text file, one example a line."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "predict: JSON-lines output, one line per input line."
)
_SKIP_BAD_LINES = flags.DEFINE_bool(
    "skip_bad_lines", False, "predict: report and skip unreadable lines instead of stopping."
)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "export: output folder (default WORKDIR/export)."
)
flags.mark_flags_as_required(["workdir"])


class QuietLibraries(std_logging.Filter):
    """Drops other libraries' INFO lines (Orbax logs each save in ~60 of them); keeps warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        """True for records to print."""
        return record.levelno >= std_logging.WARNING or "beex_jax" in record.pathname


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a readable error for an unknown `--config.` field."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # How ml_collections reports an unknown field.
        cause = e
        while cause.__context__ is not None and not isinstance(cause, KeyError):
            cause = cause.__context__
        sys.exit(f"FATAL Flags parsing error: unknown config field {cause.args[0]}")


def main(argv: list[str]) -> None:
    """Runs the selected mode."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(QuietLibraries())
    if _MODE.value == "train":
        if _CONFIG.value is None:
            raise app.UsageError("--mode=train needs --config.")
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "pretrain":
        if _CONFIG.value is None:
            raise app.UsageError("--mode=pretrain needs --config (configs/pretrain.py).")
        from beex_jax import pretrain  # Imported only when used.

        pretrain.pretrain(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "predict":
        if not _INPUT.value or not _OUTPUT.value:
            raise app.UsageError("--mode=predict needs --input and --output.")
        from beex_jax import export, predict  # Imported only when used.

        try:
            predict.predict(
                _CONFIG.value,
                _WORKDIR.value,
                input_path=_INPUT.value,
                output_path=_OUTPUT.value,
                skip_bad_lines=_SKIP_BAD_LINES.value,
            )
        except (predict.BadInputError, export.ExportError, FileNotFoundError) as e:
            sys.exit(f"ERROR: {e}")  # Bad input, not a bug: one line, no traceback.
    else:
        from beex_jax import export  # Imported only when used.

        try:
            export.export(_CONFIG.value, _WORKDIR.value, export_dir=_EXPORT_DIR.value)
        except export.ExportError as e:
            sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
