"""GLUE metrics on cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import metrics


def test_primary_metric_names():
    """GLUE ranks CoLA by MCC, MRPC/QQP by F1, STS-B by Pearson, the rest by accuracy."""
    expected = {
        "cola": "matthews_corr",
        "mrpc": "f1",
        "qqp": "f1",
        "stsb": "pearson",
        "sst2": "accuracy",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
    }
    assert {task: metrics.primary_metric_name(task) for task in expected} == expected
    with pytest.raises(ValueError, match="valid tasks"):
        metrics.primary_metric_name("imdb")


def test_accuracy_from_ids_or_logits():
    """3 of 4 right; logits are arg-maxed."""
    labels = np.array([0, 1, 1, 0])
    assert metrics.glue_metrics("sst2", np.array([0, 1, 0, 0]), labels) == {"accuracy": 0.75}
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, -1.0]])
    assert metrics.glue_metrics("rte", logits, labels) == {"accuracy": 0.75}


def test_matthews_for_cola():
    """TP=2, TN=1, FP=1, FN=1: MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6."""
    out = metrics.glue_metrics("cola", np.array([1, 1, 0, 1, 0]), np.array([1, 1, 0, 0, 1]))
    assert out["matthews_corr"] == pytest.approx(1 / 6) and out["accuracy"] == 0.6


def test_f1_and_accuracy_for_mrpc_and_qqp():
    """TP=2, FP=1, FN=1: precision = recall = 2/3, F1 = 2/3; accuracy 4/6."""
    predictions, labels = np.array([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0])
    for task in ("mrpc", "qqp"):
        out = metrics.glue_metrics(task, predictions, labels)
        assert out == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6})


def test_pearson_and_spearman_for_stsb():
    """y = x^3 is monotone (Spearman 1) but not linear; Pearson by hand for x = -1, 0, 1, 2."""
    x = np.array([-1.0, 0.0, 1.0, 2.0])
    out = metrics.glue_metrics("stsb", x[:, None] ** 3, x)  # [N, 1] regression output.
    y = x**3
    dx, dy = x - x.mean(), y - y.mean()
    assert out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] == pytest.approx((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))
    assert metrics.glue_metrics("stsb", np.ones(4), x) == {"pearson": 0.0, "spearman": 0.0}


def test_mnli_matched_and_mismatched():
    """MNLI is scored per dev set, each under its own prefix."""
    out = metrics.split_metrics(
        "mnli",
        {
            "validation_matched": (np.array([0, 1, 2]), np.array([0, 1, 1])),
            "validation_mismatched": (np.array([2, 2]), np.array([2, 2])),
        },
    )
    assert out == pytest.approx(
        {"validation_matched/accuracy": 2 / 3, "validation_mismatched/accuracy": 1.0}
    )


def test_padding_weights_and_bad_input():
    """Weight-0 examples are ignored; test labels (-1) and size mismatches are refused."""
    out = metrics.glue_metrics(
        "sst2", np.array([1, 0, 1]), np.array([1, 1, 0]), weights=np.array([1.0, 0.0, 0.0])
    )
    assert out == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="-1"):
        metrics.glue_metrics("sst2", np.array([1]), np.array([-1]))
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        metrics.glue_metrics("sst2", np.array([1, 0]), np.array([1, 0, 1]))


@settings(max_examples=25)
@given(st.lists(st.integers(0, 1), min_size=2, max_size=50))
def test_perfect_predictions_score_one(labels):
    """Predicting the labels gives accuracy 1 and F1 1 (or 0 when there is no positive)."""
    labels = np.array(labels)
    out = metrics.glue_metrics("mrpc", labels, labels)
    assert out["accuracy"] == 1.0 and out["f1"] == (1.0 if labels.any() else 0.0)
