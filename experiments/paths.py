"""Repository-relative paths for the commands and records the experiments write."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def relative(path: Path | str) -> str:
    """`path` relative to the repository root where it can be (`../shared/...` included)."""
    absolute = os.path.abspath(path)  # Symlinks kept: a runner's runs/ may link elsewhere.
    try:
        return os.path.relpath(absolute, REPO)
    except ValueError:  # Another drive: keep it as given.
        return str(path)


def command_line(argv: list[str]) -> str:
    """The command that ran, as `python ARGS` with absolute paths made repo-relative.

    Paths are rewritten wherever they stand: as an argument, in `--flag=PATH`, and in
    comma-separated lists of paths, so that a result reads (and runs) the same in any checkout.
    """
    args = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        parts = [relative(part) if part.startswith("/") else part for part in value.split(",")]
        args.append(f"{flag}{eq}{','.join(parts)}")
    return shlex.join(["python", *args])
