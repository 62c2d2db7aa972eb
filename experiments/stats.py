"""Sampling error of GLUE dev scores, shared by the results tables."""

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
