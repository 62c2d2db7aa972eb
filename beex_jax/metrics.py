"""GLUE metrics of every task (scikit-learn / scipy).

accuracy everywhere; Matthews correlation for CoLA; F1 (of the positive class) and accuracy for
MRPC and QQP; Pearson and Spearman correlations for STS-B. MNLI is scored on its matched and
mismatched dev sets separately: `split_metrics` prefixes each split's metrics with its name.

`glue_score` is the single number GLUE's leaderboard gives a task: the mean of F1 and accuracy for
MRPC and QQP, of Pearson and Spearman for STS-B, the primary metric elsewhere. Model selection
uses it, so that a model answering MRPC's majority class (high F1, majority accuracy) does not
beat one that has learned the task.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

_PRIMARY = {"cola": "matthews_corr", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}
_TASKS = ("sst2", "cola", "mrpc", "rte", "stsb", "wnli", "qnli", "qqp", "mnli", "ax")


def primary_metric_name(task: str) -> str:
    """The metric GLUE ranks `task` by: matthews_corr, f1, pearson or accuracy."""
    _check_task(task)
    return _PRIMARY.get(task, "accuracy")


def glue_score(task: str, task_metrics: Mapping[str, float]) -> float:
    """GLUE's per-task score from `glue_metrics` output (a mean where GLUE reports two)."""
    _check_task(task)
    if task in ("mrpc", "qqp"):
        return (task_metrics["f1"] + task_metrics["accuracy"]) / 2
    if task == "stsb":
        return (task_metrics["pearson"] + task_metrics["spearman"]) / 2
    return task_metrics[primary_metric_name(task)]


def _check_task(task: str) -> None:
    """Raises a ValueError listing the valid tasks."""
    if task not in _TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; valid tasks: {', '.join(_TASKS)}.")


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    """A correlation, 0.0 when either side is constant (as sklearn does for Matthews)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(fn(x, y)[0])


def glue_metrics(
    task: str, predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, float]:
    """GLUE metrics of one split: predictions are class ids, logits [N, C] or STS-B scores.

    Examples of weight 0 (padding) are left out.
    """
    _check_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task == "stsb":
        predictions = predictions.reshape(len(predictions), -1)[:, 0].astype(np.float64)
    elif predictions.ndim == 2:
        predictions = predictions.argmax(-1)
    if weights is not None:
        keep = np.asarray(weights) > 0
        predictions, labels = predictions[keep], labels[keep]
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {labels.shape[0]} labels.")
    if len(labels) == 0:
        raise ValueError(f"No labelled examples to score {task} on.")
    if task == "stsb":
        labels = labels.astype(np.float64)
        return {
            "pearson": _correlation(stats.pearsonr, predictions, labels),
            "spearman": _correlation(stats.spearmanr, predictions, labels),
        }
    if (labels < 0).any():
        raise ValueError(f"{task}: labels contain -1 (a test split has no labels to score).")
    out = {"accuracy": float(sk_metrics.accuracy_score(labels, predictions))}
    if task == "cola":
        out["matthews_corr"] = float(sk_metrics.matthews_corrcoef(labels, predictions))
    if task in ("mrpc", "qqp"):
        out["f1"] = float(sk_metrics.f1_score(labels, predictions, zero_division=0.0))
    return out


def split_metrics(task: str, results: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Metrics of several splits, e.g. MNLI's: {"validation_matched/accuracy": ..., ...}."""
    return {
        f"{split}/{name}": value
        for split, (predictions, labels) in results.items()
        for name, value in glue_metrics(task, predictions, labels).items()
    }
