"""Command line: `python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2`.

Any config field can be overridden (`--config.model.num_layers=4`); unknown fields and values of
the wrong type are rejected before anything runs.

  --mode=train --config C --workdir W [--allow_config_change]
      trains (`beex_jax.train.train_and_evaluate`), resuming from W's latest checkpoint; a
      resume with another config than W's is refused unless --allow_config_change.
  --mode=pretrain --config configs/pretrain.py --workdir W
      MLM pretraining of the body on unlabeled text (`beex_jax.pretrain.pretrain`); fine-tune
      from it with `--config.init_from=W`.
  --mode=predict --workdir W --input F --output O [--skip_bad_lines]
      predictions of the model in W (a training workdir or an export) for every line of F, as
      JSON lines (`beex_jax.predict.predict`); --config is optional, and if given its `exit`
      section replaces the model's (e.g. `--config.exit.delta=0.2`).
  --mode=predict --workdir W --split=test --glue_submission D
      the GLUE server's files of W's task (`beex_jax.submission`) in D; --config, if given,
      also says where the GLUE data is (its data.glue_dir, manual_dir, tfds_dir).
  --mode=export --workdir W [--export_dir D]
      the packed 1-bit model of W's best checkpoint in D (default W/export), with its size
      report (`beex_jax.export.export`).

A failure caused by the input, the config, the data or the machine (`beex_jax.failures`) ends
with one line, `ERROR: ...`, and exit status 1; `--verbosity=1` shows the traceback as well.
"""

from __future__ import annotations

import logging as std_logging
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from beex_jax import train
from beex_jax.failures import error_message

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
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "train/pretrain: resume a workdir with a config that differs from its own (the workdir's "
    "config_history.jsonl keeps every config used).",
)
_SPLIT = flags.DEFINE_enum("split", "test", ["test"], "predict --glue_submission: the split.")
_GLUE_SUBMISSION = flags.DEFINE_string(
    "glue_submission", None, "predict: write the GLUE server's test-prediction files here."
)
flags.mark_flags_as_required(["workdir"])


class QuietLibraries(std_logging.Filter):
    """Drops other libraries' INFO lines (Orbax logs each save in ~60 of them); keeps warnings.

    With `brief`, other libraries' warnings and errors keep their first line only, without a
    traceback (a failed background save makes Orbax log hundreds of traceback lines).
    """

    def __init__(self, brief: bool = False):
        super().__init__()
        self.brief = brief

    def filter(self, record: std_logging.LogRecord) -> bool:
        """True for records to print."""
        if "has no dataset_info.json" in str(record.msg):  # TFDS, before preparing a task.
            return False
        ours = "beex_jax" in record.pathname
        if self.brief and not ours and (record.exc_info or record.exc_text):
            record.msg = record.getMessage().splitlines()[0] if record.getMessage() else ""
            record.args, record.exc_info, record.exc_text = (), None, None
        return record.levelno >= std_logging.WARNING or ours


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a readable error for an unknown `--config.` field."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # How ml_collections reports an unknown field.
        cause = e
        while cause.__context__ is not None and not isinstance(cause, KeyError):
            cause = cause.__context__
        sys.exit(f"FATAL Flags parsing error: unknown config field {cause.args[0]}")


def _run_mode() -> None:
    """Dispatches --mode."""
    if _MODE.value == "train":
        if _CONFIG.value is None:
            raise app.UsageError("--mode=train needs --config.")
        train.train_and_evaluate(
            _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
    elif _MODE.value == "pretrain":
        if _CONFIG.value is None:
            raise app.UsageError("--mode=pretrain needs --config (configs/pretrain.py).")
        from beex_jax import pretrain  # Imported only when used.

        pretrain.pretrain(
            _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
    elif _MODE.value == "predict" and _GLUE_SUBMISSION.value:
        from beex_jax import predict, submission  # Imported only when used.

        predictor = predict.load(_WORKDIR.value)
        data = (_CONFIG.value or predictor.config).data
        written = submission.write_submission(
            predictor,
            _GLUE_SUBMISSION.value,
            tfds_dir=data.tfds_dir,
            glue_dir=data.glue_dir,
            manual_dir=data.manual_dir,
            split=_SPLIT.value,
        )
        print(", ".join(f"{name}: {rows} rows" for name, rows in written.items()))
    elif _MODE.value == "predict":
        if not _INPUT.value or not _OUTPUT.value:
            raise app.UsageError(
                "--mode=predict needs --input and --output (or --split=test --glue_submission)."
            )
        from beex_jax import predict  # Imported only when used.

        predict.predict(
            _CONFIG.value,
            _WORKDIR.value,
            input_path=_INPUT.value,
            output_path=_OUTPUT.value,
            skip_bad_lines=_SKIP_BAD_LINES.value,
        )
    else:
        from beex_jax import export  # Imported only when used.

        export.export(_CONFIG.value, _WORKDIR.value, export_dir=_EXPORT_DIR.value)


def main(argv: list[str]) -> None:
    """Runs the selected mode; an expected failure ends in one line (traceback: --verbosity=1)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    brief = logging.get_verbosity() < logging.DEBUG
    logging.get_absl_handler().addFilter(QuietLibraries(brief))
    if brief:  # Tracebacks that background threads print on their way out (a failed save).
        sys.unraisablehook = lambda unraisable: None
    try:
        _run_mode()
    except Exception as e:
        message = error_message(e)
        if message is None or logging.get_verbosity() >= logging.DEBUG:
            raise
        # Failed background saves leave asyncio tasks that it reports at exit, after our line.
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        # ...and write coroutines it never ran, which Python warns of when they are collected.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        sys.exit(f"ERROR: {message}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
