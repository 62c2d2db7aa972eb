"""The experiment sweeps name unique runs whose overrides are valid config fields."""

from __future__ import annotations

import pytest

from configs import glue, sweeps


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
@pytest.mark.parametrize("budget", ["cpu", "full"])
def test_sweep_runs_are_unique_and_apply_to_their_config(name: str, budget: str) -> None:
    runs = sweeps.get_sweep(name, budget)
    assert len({r.name for r in runs}) == len(runs)
    for run in runs:
        config = glue.get_config(run.variant.split(":")[-1]).unlock()
        for key, value in run.overrides:
            node = config
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node[parent]
            assert leaf in node, f"{run.name}: unknown config field {key}"
            node[leaf] = value


def test_runs_shared_between_sweeps_have_the_same_training() -> None:
    by_name: dict[str, sweeps.Run] = {}
    for name in sweeps.SWEEPS:
        for run in sweeps.get_sweep(name):
            if run.name in by_name:
                assert dict(by_name[run.name].overrides) == dict(run.overrides), run.name
            by_name[run.name] = run


def test_unknown_sweep_or_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown sweep"):
        sweeps.get_sweep("nope")
    with pytest.raises(ValueError, match="Unknown budget"):
        sweeps.get_sweep("reproduction", "huge")


def test_sweep_rows_keep_the_earliest_best_evaluation_and_the_learning_curve() -> None:
    from experiments import sweep

    def evaluation(step: int, f1: float, accuracy: float) -> dict[str, float]:
        return {
            "step": step,
            "validation/early_exit/f1": f1,
            "validation/early_exit/accuracy": accuracy,
        }

    records = [
        {"step": 50, "loss": 0.7, "accuracy_per_exit": [0.5, 0.6]},
        evaluation(100, 0.81, 0.68),
        {"step": 150, "loss": 0.5, "accuracy_per_exit": [0.7, 0.8]},
        evaluation(200, 0.79, 0.70),
        evaluation(300, 0.81, 0.69),
    ]
    evaluations = [r for r in records if sweep.primary_score(r, "f1") is not None]
    assert [r["step"] for r in evaluations] == [100, 200, 300]
    assert sweep.best_evaluation(evaluations, "f1")["step"] == 100
    assert sweep.early_exit_metrics(evaluations[-1], "validation", skip="f1") == "accuracy=69.00"
    assert sweep.learning_curve(records, "validation", "f1") == [
        {"step": 100, "dev_f1": 81.0, "train_batch_accuracy": 60.0},
        {"step": 200, "dev_f1": 79.0, "train_batch_accuracy": 80.0},
        {"step": 300, "dev_f1": 81.0, "train_batch_accuracy": 80.0},
    ]
