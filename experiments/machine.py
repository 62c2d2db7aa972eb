"""What machine a benchmark ran on, for the JSON it writes."""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


REPO = Path(__file__).resolve().parents[1]


def _relative(value: str) -> str:
    """An absolute path made relative to the repository root (`../shared/...` included)."""
    if not value.startswith("/"):
        return value
    relative = os.path.relpath(value, REPO)
    return value if relative.startswith("../../") else relative


def command_line(argv: list[str]) -> str:
    """The command that ran, as `python ARGS` with paths relative to the repository root.

    Results record it so that it reads (and runs) the same from any checkout: absolute paths in
    arguments, in `--flag=PATH` and in comma-separated lists of paths are made repo-relative.
    """
    args = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        value = ",".join(_relative(part) for part in value.split(","))
        args.append(f"{flag}{eq}{value}")
    return shlex.join(["python", *args])
