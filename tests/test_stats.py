"""The statistics behind the results tables' verdicts (experiments/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import stats


def test_verdict_needs_two_standard_errors():
    assert stats.verdict(3.0, 1.0) == "better"
    assert stats.verdict(-3.0, 1.0) == "worse"
    assert stats.verdict(1.9, 1.0) == "noise"
    assert stats.verdict(0.0, 0.0) == "noise"


def test_mcnemar_counts_the_discordant_examples():
    a = np.array([True, True, True, False])
    b = np.array([False, True, False, False])
    assert stats.mcnemar_p(a, b) == {"only_a": 2, "only_b": 0, "p": 0.5}
    assert stats.mcnemar_p(a, a)["p"] == 1.0


def test_paired_comparison_of_nested_errors_is_tighter_than_the_unpaired_error():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    b = labels.copy()
    b[:80] = 1 - b[:80]  # B: 80% right.
    a = labels.copy()
    a[:40] = 1 - a[:40]  # A: 90% right, wrong only where B is wrong too.
    result = stats.paired_comparison("sst2", [a, a], [b, b], labels, samples=500)
    assert result["a_scores"] == [90.0, 90.0] and result["b_scores"] == [80.0, 80.0]
    assert result["difference"] == pytest.approx(10.0)
    assert result["seed_se"] == 0.0
    assert result["mcnemar"][0] == {"only_a": 40, "only_b": 0, "p": pytest.approx(1.8e-12, rel=0.1)}
    # Sqrt(40)/400 = 1.58 points paired, against 2.0 for B's accuracy alone.
    assert 1.2 < result["paired_dev"]["se"] < 1.9 < stats.dev_standard_error("accuracy", 80.0, 400)
    assert result["verdict"] == "better"
    same = stats.paired_comparison("sst2", [a], [a], labels, samples=200)
    assert same["difference"] == 0.0 and same["paired_dev"]["se"] == 0.0
    assert same["seed_se"] is None and same["verdict"] == "noise"


def test_paired_comparison_scores_sts_b_by_correlation():
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 300)
    close = labels + rng.normal(0, 0.5, 300)
    far = labels + rng.normal(0, 3.0, 300)
    result = stats.paired_comparison("stsb", [close], [far], labels, samples=300)
    assert result["a_scores"][0] > 90 > result["b_scores"][0]
    assert result["verdict"] == "better" and "mcnemar" not in result
