"""Repository-relative paths for the commands and records the experiments write."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def relative(path: Path | str) -> str:
    """`path` relative to the repository root where it can be (`../shared/...` included)."""
    absolute = os.path.abspath(path)  # Symlinks kept: a runner's runs/ may link elsewhere.
    try:
        return os.path.relpath(absolute, REPO)
    except ValueError:  # Another drive: keep it as given.
        return str(path)
