"""Prints the table of experiments/results/topic_reproduction.md from the committed sweep JSON.

  python experiments/sweeps/reproduction_table.py [--table=experiments/results/reproduction.json]

One row per task and precision: early exit (mean ± std over seeds), each seed's early exit with
its GLUE metrics, the last exit at its own best evaluation, mean exit block, FLOPs saved, and
issue 11's target. Then, per task, binarized minus full precision with its standard error, per
configuration early exit minus last exit with the FLOPs saved, and each task's dev-set standard
error (what one run's score could move by on another sample of the same size).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiments.stats import (  # noqa: E402
    DEV_EXAMPLES,
    dev_standard_error,
    seed_standard_error,
)

RESULTS = REPO / "experiments/results"
_TABLE = flags.DEFINE_string("table", str(RESULTS / "reproduction.json"), "Sweep rows JSON.")
_SEED_TABLE = flags.DEFINE_string(
    "seed_table", str(RESULTS / "reproduction_seeds.json"), "Its seed summaries JSON."
)

# Issue 11's targets, binarized, early exit.
TARGETS = {
    "cola": "MCC >= 15",
    "mrpc": "accuracy >= 73.4, F1 >= 81.2",
    "rte": ">= 55",
    "stsb": "Pearson >= 40",
    "sst2": ">= 82.5",
    "wnli": "-",
}


def dev_standard_errors(summaries: list[dict[str, Any]]) -> list[str]:
    """Per task, the dev-set standard error at its binarized early-exit score."""
    lines = []
    for summary in summaries:
        if summary["precision"] != "binary" or summary["task"] not in DEV_EXAMPLES:
            continue
        n = DEV_EXAMPLES[summary["task"]]
        error = dev_standard_error(summary["score"], summary["early_exit"], n)
        lines.append(f"- {summary['task']}: {error:.2f} ({summary['score']}, {n} examples)")
    return lines


def table_rows(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the reproduction table, in the order of `summaries`."""
    lines = [
        "| task | precision | seeds | early exit, mean ± std | each seed: early exit (its metrics)"
        " | last exit at its own best, each seed | mean exit block | FLOPs saved | train min,"
        " each seed | issue-11 target (early exit) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        members = [r for r in runs if r["group"] == summary["group"]]
        std = summary["early_exit_std"]
        mean = f"{summary['early_exit']:.2f}" + (f" ± {std:.2f}" if std is not None else "")
        each = "; ".join(f"{r['early_exit']:.2f} ({r['early_exit_metrics']})" for r in members)
        last = ", ".join(f"{r['last_exit_best']:.2f}" for r in members)
        minutes = ", ".join(f"{r['train_minutes']:.1f}" for r in members)
        target = TARGETS.get(summary["task"], "") if summary["precision"] == "binary" else ""
        lines.append(
            f"| {summary['task']} | {summary['precision']} | {summary['n']} | {mean} | {each} | "
            f"{last} | {summary['mean_exit_block']:.2f} | {summary['flops_saved_pct']:.1f}% | "
            f"{minutes} | {target} |"
        )
    return lines


def precision_differences(summaries: list[dict[str, Any]]) -> list[str]:
    """Per task, binarized minus full-precision early exit and its standard error (from the two
    groups' seed standard deviations); a difference within two standard errors is noise."""
    by_key = {(s["task"], s["precision"]): s for s in summaries}
    lines = []
    for (task, precision), binary in by_key.items():
        full = by_key.get((task, "float"))
        if precision != "binary" or full is None:
            continue
        difference = binary["early_exit"] - full["early_exit"]
        error = seed_standard_error(binary, full)
        if error is None:
            lines.append(f"- {task}: {difference:+.2f} (one seed on a side: no standard error)")
            continue
        verdict = "within" if abs(difference) < 2 * error else "beyond"
        lines.append(f"- {task}: {difference:+.2f} (seed SE {error:.2f}: {verdict} 2 SE)")
    return lines


def exit_differences(runs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """Per group, early exit minus the last exit (each at its own best evaluation), and the
    fewest FLOPs any of its runs saved (claim 2 and the >= 50% target)."""
    lines = []
    for summary in summaries:
        members = [r for r in runs if r["group"] == summary["group"]]
        difference = summary["early_exit"] - summary["last_exit_best"]
        fewest = min(r["flops_saved_pct"] for r in members)
        saved = summary["flops_saved_pct"]
        lines.append(
            f"- {summary['group']}: {difference:+.2f}; FLOPs saved {saved:.1f}%"
            f" (fewest in one run {fewest:.1f}%)"
        )
    return lines


def main(argv: list[str]) -> None:
    """Prints the table and the binarized-vs-float differences."""
    del argv
    runs = json.loads(Path(_TABLE.value).read_text())
    summaries = json.loads(Path(_SEED_TABLE.value).read_text())
    print("\n".join(table_rows(runs, summaries)))
    print("\nBinarized minus full precision, early exit:")
    print("\n".join(precision_differences(summaries)))
    print("\nEarly exit minus last exit (each at its own best), FLOPs saved:")
    print("\n".join(exit_differences(runs, summaries)))
    print("\nDev-set standard error at the binarized early-exit score:")
    print("\n".join(dev_standard_errors(summaries)))


if __name__ == "__main__":
    app.run(main)
