"""Standard errors of GLUE dev scores and of their differences (unpaired, from the seeds, and
paired on the same dev examples), shared by the results tables and
experiments/sweeps/paired_dev.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import binomtest

from beex_jax import metrics

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


def paired_bootstrap(
    score_fn: Callable[[np.ndarray], float],
    num_examples: int,
    *,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Standard error and 95% interval of `score_fn(indices)` over bootstrap resamples of the
    dev examples (the same resample for both models of a pair, so shared hard examples cancel:
    the paired dev-set error of a difference)."""
    rng = np.random.default_rng(seed)
    values = np.array(
        [score_fn(rng.integers(0, num_examples, num_examples)) for _ in range(samples)]
    )
    low, high = np.percentile(values, [2.5, 97.5])
    return {
        "se": float(values.std(ddof=1)),
        "low": float(low),
        "high": float(high),
        "samples": samples,
    }


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float]:
    """Exact two-sided McNemar test of two classifiers on the same examples: the discordant
    counts (only A right, only B right) and the binomial p-value of their split."""
    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(~a_correct & b_correct))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


def verdict(difference: float, error: float) -> str:
    """noise when |difference| is under two standard errors (or 0), else better or worse."""
    if difference == 0 or abs(difference) < 2 * error:
        return "noise"
    return "better" if difference > 0 else "worse"


def glue_points(task: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """GLUE score in points."""
    return 100 * metrics.glue_score(task, metrics.glue_metrics(task, predictions, labels))


def paired_comparison(
    task: str,
    a_predictions: list[np.ndarray],
    b_predictions: list[np.ndarray],
    labels: np.ndarray,
    *,
    samples: int,
) -> dict[str, Any]:
    """Seed-mean difference of the GLUE scores of A and B (dev predictions, one per seed, paired
    by seed) with its seed SE, paired bootstrap SE, verdict, and McNemar tests (classification)."""
    a_scores = [glue_points(task, p, labels) for p in a_predictions]
    b_scores = [glue_points(task, p, labels) for p in b_predictions]
    difference = float(np.mean(a_scores) - np.mean(b_scores))

    def resampled_difference(index: np.ndarray) -> float:
        a = np.mean([glue_points(task, p[index], labels[index]) for p in a_predictions])
        b = np.mean([glue_points(task, p[index], labels[index]) for p in b_predictions])
        return float(a - b)

    bootstrap = paired_bootstrap(resampled_difference, len(labels), samples=samples)
    seed_se = None
    if len(a_scores) > 1:
        seed_se = float(
            np.sqrt(
                np.var(a_scores, ddof=1) / len(a_scores) + np.var(b_scores, ddof=1) / len(b_scores)
            )
        )
    out = {
        "a_scores": a_scores,
        "b_scores": b_scores,
        "difference": difference,
        "seed_se": seed_se,
        "paired_dev": bootstrap,
        "verdict": verdict(difference, max(bootstrap["se"], seed_se or 0.0)),
    }
    if task != "stsb":
        out["mcnemar"] = [
            mcnemar_p(a == labels, b == labels)
            for a, b in zip(a_predictions, b_predictions, strict=True)
        ]
    return out
