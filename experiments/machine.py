"""What machine a benchmark ran on, for the JSON it writes."""

from __future__ import annotations

import os
import platform
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


def describe() -> dict[str, object]:
    """CPU, platform and JAX backend/devices of this process, for a benchmark's JSON."""
    import jax  # Imported here: experiments that only read JSON need not load JAX.

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }
