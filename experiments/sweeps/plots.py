"""Plots for experiments/results: exit-policy Pareto fronts, exit histograms, training curves,
and the fine-tuned dev metric against pretraining steps.

  python experiments/sweeps/plots.py [--policies=experiments/results/exit_policies.json] \
      [--sweep=experiments/results/reproduction.json] \
      [--pretrained=experiments/results/pretrained.json] [--out=experiments/results]
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiments.stats import baseline_start  # noqa: E402

RESULTS = REPO / "experiments/results"
_POLICIES = flags.DEFINE_string("policies", str(RESULTS / "exit_policies.json"), "Policy JSON.")
_SWEEP = flags.DEFINE_string("sweep", str(RESULTS / "reproduction.json"), "Sweep rows JSON.")
_PRETRAINED = flags.DEFINE_string(
    "pretrained", str(RESULTS / "pretrained.json"), "Rows of the `pretrained` sweep."
)
_OUT = flags.DEFINE_string("out", str(RESULTS), "Output folder for PNGs.")
LABELS = {
    "entropy_reduction": "fractional entropy reduction (ours)",
    "entropy_threshold": "entropy threshold (DeeBERT)",
    "patience": "patience (PABEE)",
}


def _grid(count: int) -> tuple[Any, list[Any]]:
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def plot_pareto(policies: dict[str, Any], out: Path) -> Path:
    """Dev metric vs mean FLOPs (fraction of full depth), one curve per exit policy."""
    models = policies["models"]
    fig, axes = _grid(len(models))
    for ax, model in zip(axes, models, strict=True):
        for policy in LABELS:
            points = sorted(
                (p for p in model["points"] if p["policy"] == policy),
                key=lambda p: p["flops_fraction"],
            )
            if points:
                ax.plot(
                    [100 * p["flops_fraction"] for p in points],
                    [100 * p["metric"] for p in points],
                    marker="o",
                    label=LABELS[policy],
                )
        ax.axhline(100 * model["per_exit_metric"][-1], color="gray", ls="--", label="last exit")
        kind = "binarized" if model["binarize"] else "full precision"
        ax.set_title(f"{Path(model['workdir']).name} ({kind})", fontsize=10)
        ax.set_xlabel("mean FLOPs, % of full depth")
        ax.set_ylabel(f"dev {model['metric']} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "pareto_exit_policies.png"
    fig.savefig(path, dpi=110)
    return path


def plot_histograms(rows: list[dict[str, Any]], out: Path) -> Path:
    """Exit-block histograms (dev, configured delta) of every run of a sweep."""
    fig, axes = _grid(len(rows))
    for ax, row in zip(axes, rows, strict=True):
        hist = row["exit_histogram"]
        ax.bar(range(1, len(hist) + 1), hist)
        ax.set_title(f"{row['run']}: mean exit {row['mean_exit_block']}", fontsize=9)
        ax.set_xlabel("exit block")
    fig.tight_layout()
    path = out / "exit_histograms.png"
    fig.savefig(path, dpi=110)
    return path


def plot_training_curves(rows: list[dict[str, Any]], out: Path) -> Path:
    """Dev score with early exit against training step, one panel per task, every run a line
    (binarized solid, full precision dashed), from the rows' per-evaluation learning curves."""
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        task_rows = [row for row in rows if row["task"] == task]
        for row in task_rows:
            curve = row["by_evaluation"]
            style = "--" if row.get("precision") == "float" else "-"
            ax.plot(
                [p["step"] for p in curve],
                [next(v for k, v in p.items() if k.startswith("dev_")) for p in curve],
                style,
                marker=".",
                label=row["run"],
            )
        score = task_rows[0].get("score", task_rows[0].get("metric"))
        ax.set(title=task, xlabel="training step", ylabel=f"dev {score}, early exit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    return path


def plot_pretraining_steps(rows: list[dict[str, Any]], out: Path) -> Path:
    """Binarized fine-tuned dev score (early and last exit) against the pretraining steps of the
    body it started from (0: the same model from scratch, `experiments.stats.baseline_start`), one
    panel per task, a line per pretraining run (the `start` tag without its `@step`), every seed a
    point; runs with a gentler body learning rate (`-gentle`, `-layerdecay` starts) as separate
    crosses off the lines; frozen-body probes are left out (another fine-tuning, in the table
    only)."""
    binary = [r for r in rows if r.get("precision") == "binary"]
    tasks = [t for t in dict.fromkeys(r["task"] for r in binary)]
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        by_source: dict[str, list[dict[str, Any]]] = {}
        for row in (r for r in binary if r["task"] == task):
            by_source.setdefault(str(row.get("start")).split("@")[0], []).append(row)
        for source, source_rows in by_source.items():
            if source.startswith(("scratch", "frozen-")):  # No pretraining axis of its own.
                continue
            scratch = by_source.get(baseline_start(source) or "", [])
            if "gentle" in source or "layerdecay" in source:
                scale = re.search(
                    r"optim\.(body_lr_scale|layer_decay)=(\S+)", source_rows[0]["overrides"]
                )
                ax.scatter(
                    [int(r["pretraining_steps"]) for r in source_rows],
                    [r["early_exit"] for r in source_rows],
                    marker="x" if "gentle" in source else "+",
                    color="black",
                    label=f"early exit, {source}"
                    + (f", {scale.group(1)} {scale.group(2)}" if scale else ""),
                )
                continue
            for key, label, marker in (
                ("early_exit", "early exit", "o"),
                ("last_exit_best", "last exit", "s"),
            ):
                points = sorted(
                    (int(r.get("pretraining_steps", 0)), r[key]) for r in scratch + source_rows
                )
                steps = sorted({s for s, _ in points})
                means = [float(np.mean([v for s, v in points if s == x])) for x in steps]
                line = ax.plot(steps, means, label=f"{label}, {source} (mean)")[0]
                ax.scatter(
                    *zip(*points, strict=True), marker=marker, color=line.get_color(), alpha=0.5
                )
        ax.set(title=task, xlabel="pretraining steps of the body (0: from scratch)")
        ax.set_ylabel(f"dev {next(r for r in binary if r['task'] == task)['score']} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "pretraining_steps.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str]) -> None:
    """Draws every plot whose input exists."""
    del argv
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    if Path(_POLICIES.value).exists():
        print(plot_pareto(json.loads(Path(_POLICIES.value).read_text()), out))
    if Path(_SWEEP.value).exists():
        rows = json.loads(Path(_SWEEP.value).read_text())
        if rows:
            print(plot_histograms(rows, out))
            print(plot_training_curves(rows, out))
    if Path(_PRETRAINED.value).exists():
        rows = json.loads(Path(_PRETRAINED.value).read_text())
        if rows:
            print(plot_pretraining_steps(rows, out))


if __name__ == "__main__":
    app.run(main)
