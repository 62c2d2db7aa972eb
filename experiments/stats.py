"""Standard errors of GLUE dev scores and of their differences, shared by the results tables."""

from __future__ import annotations

import numpy as np

# GLUE dev examples per task (../shared/data/README.md).
DEV_EXAMPLES = {"cola": 1043, "mrpc": 408, "rte": 277, "stsb": 1500, "sst2": 872, "wnli": 71}
CORRELATION_SCORES = ("matthews_corr", "mean(Pearson, Spearman)")


def dev_standard_error(score_name: str, score: float, num_examples: int) -> float:
    """Sampling standard error of a dev score in points: sqrt(p(1-p)/n) for a proportion (the
    MRPC mean of F1 and accuracy taken as one), (1-r^2)/sqrt(n-1) for a correlation."""
    value = score / 100
    if score_name in CORRELATION_SCORES:
        return 100 * (1 - value**2) / float(np.sqrt(num_examples - 1))
    return 100 * float(np.sqrt(value * (1 - value) / num_examples))


def seed_standard_error(a: dict, b: dict, key: str = "early_exit") -> float | None:
    """Standard error of the difference of two seed summaries' means of `key`, from their sample
    standard deviations; None when either side has a single seed."""
    stds = (a[f"{key}_std"], b[f"{key}_std"])
    if None in stds:
        return None
    return float(np.sqrt(stds[0] ** 2 / a["n"] + stds[1] ** 2 / b["n"]))


def baseline_start(start: str) -> str | None:
    """The `pretrained` sweep's start a fine-tuning start is compared against: the same model
    from scratch (`scratch-alibi` for ALiBi bodies, `scratch` otherwise), a frozen body against
    the frozen untrained body, a frozen untrained body against training it; None for `scratch`.
    """
    if start == "scratch":
        return None
    if start.startswith("frozen-"):
        rest = start.removeprefix("frozen-")
        return rest if rest.startswith("scratch") else f"frozen-{baseline_start(rest)}"
    if start.startswith("scratch"):
        return "scratch"
    return "scratch-alibi" if "alibi" in start else "scratch"
