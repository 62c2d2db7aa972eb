"""Which failures are the user's (input, config, data, machine) and their one-line message.

`python -m beex_jax.main` prints `ERROR: <error_message(e)>` for these instead of a traceback;
anything else is a bug and keeps its traceback. Kept apart from `main` so that it can be used
(and tested) without defining the command line's flags.
"""

from __future__ import annotations

import errno

# errno values that mean the machine refused a write: disk full, quota, file size limit, read-only
# file system, permissions.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
_WRITE_MESSAGES = ("No space left on device", "Disk quota exceeded", "File too large")


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception it was raised from or during."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def error_message(error: BaseException) -> str | None:
    """The one-line message for a failure that is not a bug in beex-jax; None for the rest."""
    from beex_jax import checkpointing, config_fields, export, init_from  # Imported when used.
    from beex_jax.data import corpus, glue_builder
    from beex_jax.predict_files import BadInputError

    expected = (
        config_fields.ConfigError,
        checkpointing.CheckpointError,
        checkpointing.WorkdirError,
        init_from.InitFromError,
        glue_builder.GlueFormatError,
        corpus.TextFileError,
        export.ExportError,
        BadInputError,
        FileNotFoundError,
        FloatingPointError,  # The stop on a non-finite loss, which says what is kept.
    )
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in _WRITE_ERRNOS:
            where = f" {cause.filename}" if cause.filename else ""
            return (
                f"cannot write{where}: {cause.strerror}. Free space or use a writable folder "
                f"(--workdir, --config.data.tfds_dir); a rerun resumes from the last checkpoint."
            )
        text = str(cause)
        found = next((m for m in _WRITE_MESSAGES if m in text), None)
        if found:  # Orbax/TensorStore report a failed write in their own exception types.
            return (
                f"cannot write the checkpoint ({found}): free disk space or use another "
                f"--workdir; a rerun resumes from the last complete checkpoint."
            )
    if isinstance(error, expected) or type(error) is ValueError:
        return " ".join(str(error).split())
    return None
