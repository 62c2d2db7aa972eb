"""The experiment sweeps name unique runs whose overrides are valid config fields."""

from __future__ import annotations

import pathlib

import pytest

from beex_jax import evaluate
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


def test_sweep_rows_keep_the_best_glue_score_and_the_learning_curve() -> None:
    from experiments.sweeps import sweep

    def evaluation(step: int, f1: float, accuracy: float) -> dict[str, float]:
        return {
            "step": step,
            "validation/early_exit/f1": f1,
            "validation/early_exit/accuracy": accuracy,
            "validation/exit_2/f1": f1,
            "validation/exit_2/accuracy": accuracy,
        }

    records = [
        {"step": 50, "loss": 0.7, "accuracy_per_exit": [0.5, 0.6]},
        evaluation(100, 0.81, 0.68),
        {"step": 150, "loss": 0.5, "accuracy_per_exit": [0.7, 0.8]},
        evaluation(200, 0.79, 0.72),
        evaluation(300, 0.80, 0.71),
    ]
    report = evaluate.selection_report(records, "mrpc", num_layers=2)
    assert report["kept_step"] == 200  # mean(F1, accuracy) 75.5 beats the majority's 74.5.
    assert sweep.early_exit_metrics(report["final"], "validation") == "accuracy=71.00 f1=80.00"
    assert sweep.learning_curve(records, "validation", "mrpc") == [
        {"step": 100, "dev_score": 74.5, "train_batch_accuracy": 60.0},
        {"step": 200, "dev_score": 75.5, "train_batch_accuracy": 80.0},
        {"step": 300, "dev_score": 75.5, "train_batch_accuracy": 80.0},
    ]


def test_seed_groups_are_summarized_by_mean_and_std() -> None:
    from experiments.sweeps import sweep

    def row(name: str, seed: str, score: float) -> dict:
        figures = {name: score for name in sweep.AGGREGATED}
        return {
            "group": name,
            "tags": {"task": "rte", "seed": seed},
            "score": "accuracy",
            **figures,
        }

    rows = [row("a", "0", 50.0), row("a", "1", 54.0), row("b", "0", 60.0)]
    summary = {r["group"]: r for r in sweep.aggregate(rows)}
    assert summary["a"]["n"] == 2 and summary["a"]["early_exit"] == 52.0
    assert summary["a"]["early_exit_std"] == pytest.approx(2.83, abs=0.01)
    assert summary["b"]["n"] == 1 and summary["b"]["early_exit_std"] is None
    assert "seed" not in summary["a"]
    assert sweeps.Run("x-recipe-none-s1", "task=rte").group == "x-recipe-none"


def test_changes_are_judged_against_their_task_baseline_by_two_standard_errors() -> None:
    from experiments.sweeps import sweep

    def summary(change: str, mean: float, std: float) -> dict:
        figures = {name: mean for name in sweep.AGGREGATED}
        stds = {f"{name}_std": std for name in sweep.AGGREGATED}
        return {"task": "rte", "change": change, "n": 2, **figures, **stds}

    summaries = [summary("none", 50.0, 1.0), summary("a", 53.0, 1.0), summary("b", 51.0, 1.0)]
    rows = {r["change"]: r for r in sweep.compare_to_baseline(summaries)}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["standard_error"] == 1.0  # pooled std 1, sqrt(1/2 + 1/2)
    assert rows["a"]["early_exit_difference"] == 3.0 and rows["a"]["verdict"] == "better"
    assert rows["b"]["verdict"] == "within noise"
    worse = sweep.compare_to_baseline([summary("none", 50.0, 1.0), summary("c", 47.0, 1.0)])
    assert worse[0]["verdict"] == "worse"
    assert sweep.compare_to_baseline([{"task": "rte", "group": "x"}]) == []
    # The target sweep tags its runs by change but not by task: no comparison, no KeyError.
    untasked = [{k: v for k, v in summary("none", 50.0, 1.0).items() if k != "task"}]
    assert sweep.compare_to_baseline(untasked) == []


def test_recorded_commands_are_repo_relative(tmp_path) -> None:
    from experiments.sweeps import sweep

    flags_ = sweep.flags.FLAGS
    if not flags_.is_parsed():
        flags_(["sweep"])
    run = sweeps.get_sweep("recipe")[0]
    command = " ".join(sweep.run_command(run, sweep.REPO / "runs/sweeps" / run.name))
    assert command.startswith("python -m beex_jax.main --config=configs/glue.py:")
    assert "--workdir=runs/sweeps/" in command
    assert str(sweep.REPO) not in command


def test_results_hold_no_absolute_paths_of_the_machine_that_ran_them():
    """Issue 12.11: every result file records repo-relative commands and paths."""
    import re

    results = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "results"
    absolute = re.compile(r"(?<![\w.])/(work|tmp|home|root)/")
    offending = [
        path.name
        for path in sorted(results.iterdir())
        if path.suffix in (".json", ".md", ".csv") and absolute.search(path.read_text())
    ]
    assert offending == []


def test_command_line_is_repo_relative():
    from experiments import paths

    repo = str(paths.REPO)
    argv = [
        f"{repo}/experiments/probes/exit_policies.py",
        f"--workdirs={repo}/runs/a,{repo}/runs/b",
        "--glue_dir",
        f"{paths.REPO.parent}/shared/data/glue",
        "--delta=0.1",
    ]
    assert paths.command_line(argv) == (
        "python experiments/probes/exit_policies.py --workdirs=runs/a,runs/b --glue_dir "
        "../shared/data/glue --delta=0.1"
    )


def test_collecting_a_root_without_runs_keeps_the_tables(tmp_path) -> None:
    import subprocess
    import sys

    from experiments.sweeps import sweep

    table = tmp_path / "results" / "target.json"
    table.parent.mkdir()
    table.write_text('[{"run": "kept"}]')
    command = [sys.executable, "experiments/sweeps/sweep.py", "--sweep=target", "--collect_only"]
    result = subprocess.run(
        [*command, f"--root={tmp_path / 'empty'}", f"--results={table.parent}"],
        cwd=sweep.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "No finished runs of target" in result.stdout
    assert table.read_text() == '[{"run": "kept"}]'


def test_a_new_root_adds_its_runs_to_the_committed_table() -> None:
    from experiments.sweeps import sweep

    runs = sweeps.get_sweep("reproduction")
    committed = [{"run": "cola-binary-s0", "early_exit": 9.4}, {"run": "gone", "early_exit": 0}]
    fresh = [
        {"run": "cola-float-s0", "early_exit": 8.0},
        {"run": "cola-binary-s0", "early_exit": 9.9},
    ]
    rows = sweep.merge_rows(runs, fresh, committed)
    # In the sweep's order; a rerun replaces its committed row; rows of no current run are dropped.
    assert rows == [
        {"run": "cola-binary-s0", "early_exit": 9.9},
        {"run": "cola-float-s0", "early_exit": 8.0},
    ]


def test_reproduction_table_reads_groups_and_judges_precision_by_two_standard_errors() -> None:
    from experiments.sweeps import reproduction_table

    def run(group: str, early: float, flops: float) -> dict:
        return {
            "group": group,
            "early_exit": early,
            "early_exit_metrics": f"accuracy={early:.2f}",
            "last_exit_best": early - 1,
            "train_minutes": 2.0,
            "flops_saved_pct": flops,
        }

    runs = [
        run("rte-binary", 54.0, 40.0),
        run("rte-binary", 56.0, 60.0),
        run("rte-float", 50.0, 66.7),
    ]
    runs.append(run("rte-float", 50.0, 66.7))
    summaries = [
        {"group": "rte-binary", "task": "rte", "precision": "binary", "n": 2, "early_exit": 55.0,
         "early_exit_std": 1.41, "last_exit_best": 54.0, "mean_exit_block": 2.5,
         "flops_saved_pct": 50.0},
        {"group": "rte-float", "task": "rte", "precision": "float", "n": 2, "early_exit": 50.0,
         "early_exit_std": 0.0, "last_exit_best": 49.0, "mean_exit_block": 2.0,
         "flops_saved_pct": 66.7},
    ]  # fmt: skip
    lines = reproduction_table.table_rows(runs, summaries)
    assert lines[2].startswith("| rte | binary | 2 | 55.00 ± 1.41 | 54.00 (accuracy=54.00); 56.00")
    assert lines[2].endswith("| >= 55 |") and lines[3].endswith("|  |")  # Targets: binarized only.
    # +5.00 with SE 1.41 * sqrt(1/2) = 1.00: beyond two standard errors.
    assert reproduction_table.precision_differences(summaries) == [
        "- rte: +5.00 (seed SE 1.00: beyond 2 SE)"
    ]
    assert reproduction_table.exit_differences(runs, summaries)[0] == (
        "- rte-binary: +1.00; FLOPs saved 50.0% (fewest in one run 40.0%)"
    )


def test_dev_standard_errors_are_binomial_for_proportions_and_fisher_like_for_correlations():
    from experiments.sweeps import reproduction_table

    # sqrt(0.5 * 0.5 / 100) = 0.05; (1 - 0.5^2) / sqrt(1500 - 1) = 0.01937...
    assert reproduction_table.dev_standard_error("accuracy", 50.0, 100) == 5.0
    stsb = reproduction_table.dev_standard_error("mean(Pearson, Spearman)", 50.0, 1500)
    assert abs(stsb - 1.937) < 1e-3
    summaries = [
        {"task": "rte", "precision": "binary", "score": "accuracy", "early_exit": 50.0},
        {"task": "rte", "precision": "float", "score": "accuracy", "early_exit": 60.0},
    ]
    assert reproduction_table.dev_standard_errors(summaries) == [
        "- rte: 3.00 (accuracy, 277 examples)"
    ]


def test_pretrained_table_judges_each_start_against_its_baseline_by_the_larger_standard_error():
    from experiments.sweeps import pretrained_table

    def summary(start: str, early: float, std: float | None, n: int, steps: str = "") -> dict:
        return {
            "task": "sst2", "precision": "binary", "start": start, "n": n, "early_exit": early,
            "early_exit_std": std, "last_exit_best": early - 1, "last_exit_best_std": std,
            "score": "accuracy", "flops_saved_pct": 60.0, "pretraining_steps": steps,
        }  # fmt: skip

    lines = pretrained_table.comparison_lines(
        [
            summary("scratch", 78.0, 0.3, 2),
            summary("pretrained", 75.0, 0.3, 2, "5000"),  # -3.0: dev SE 1.40, seed SE 0.30.
            summary("pretrained@2500", 77.0, None, 1, "2500"),  # -1.0: within 2 dev SE.
            summary("scratch-alibi", 81.0, 0.3, 2),  # +3.0 against scratch.
            summary("pretrained-alibi", 84.0, 0.3, 2, "1000"),  # +3.0 against scratch-alibi.
            summary("frozen-scratch-alibi", 70.0, None, 1),  # -11.0 against scratch-alibi.
            summary("frozen-pretrained-alibi", 71.0, None, 1, "1000"),  # +1.0: frozen untrained.
        ]
    )
    assert len(lines) == 8
    assert lines[2] == (
        "| sst2 | binary | pretrained | 5000 | 2 | 75.00 ± 0.30 | 74.00 ± 0.30 | scratch "
        "| 78.00 ± 0.30 | -3.00 | 0.30 | 1.40 | worse | 60.0% |"
    )
    assert "| -1.00 | - | 1.40 | noise |" in lines[3]
    assert "| scratch-alibi | - | 2 |" in lines[4]
    assert "| scratch | 78.00 ± 0.30 | +3.00 |" in lines[4]
    assert "| scratch-alibi | 81.00 ± 0.30 | +3.00 | 0.30 | 1.33 | better |" in lines[5]
    assert "| scratch-alibi | 81.00 ± 0.30 | -11.00 | - |" in lines[6]
    assert "| frozen-scratch-alibi | 70.00 | +1.00 | - |" in lines[7]


def test_baseline_start_is_the_same_model_untrained_or_from_scratch():
    from experiments.stats import baseline_start

    assert baseline_start("scratch") is None
    assert baseline_start("pretrained-long@2500") == "scratch"
    assert baseline_start("scratch-alibi") == "scratch"
    assert baseline_start("pretrained-alibi-long@2500") == "scratch-alibi"
    assert baseline_start("frozen-scratch-alibi") == "scratch-alibi"
    assert baseline_start("frozen-pretrained-alibi-long") == "frozen-scratch-alibi"
