"""Runs a sweep of training runs one after another (resumable) and tabulates their results.

  python experiments/sweeps/sweep.py --sweep=reproduction --root=runs/sweeps \
      --glue_dir=../shared/data/glue [--only=sst2-binary,rte-float] [--collect_only]

Each run is `python -m beex_jax.main` in its own workdir `<root>/<run>` (shared by sweeps); a run
whose `summary.json` exists is done and skipped, an interrupted one resumes from its checkpoint.
The table (Markdown, CSV, and rows as JSON) goes to experiments/results/<sweep>.{md,csv,json}.
Reported dev figures are those of the evaluation with the best early-exit score (the checkpoint
the recipe keeps), read from the run's metrics.jsonl.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beex_jax import evaluate, metrics  # noqa: E402
from configs import sweeps  # noqa: E402
from experiments.paths import relative  # noqa: E402

_SWEEP = flags.DEFINE_enum("sweep", "reproduction", sorted(sweeps.SWEEPS), "Which sweep.")
_BUDGET = flags.DEFINE_enum("budget", "cpu", ["cpu", "full"], "Per-task training budget.")
_ROOT = flags.DEFINE_string("root", "runs/sweeps", "Workdirs go to <root>/<run>.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data (shared by runs).")
_ONLY = flags.DEFINE_list("only", [], "Run only these run names.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False, "Only tabulate finished runs.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/results"), "Output folder.")


def run_command(run: sweeps.Run, workdir: Path) -> list[str]:
    """The training command line of one run, repo-relative (it runs from the repository root)."""
    cmd = [
        "python",
        "-m",
        "beex_jax.main",
        f"--config=configs/glue.py:{run.variant}",
        f"--workdir={relative(workdir)}",
        f"--config.data.glue_dir={relative(Path(_GLUE_DIR.value))}",
        f"--config.data.tfds_dir={relative(Path(_TFDS_DIR.value))}",
    ]
    return cmd + [f"--config.{key}={value}" for key, value in run.overrides]


def train(run: sweeps.Run, workdir: Path) -> None:
    """Runs (or resumes) one training run and records its command and wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = run_command(run, workdir)
    print(f"\n### {run.name}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, *cmd[1:]], check=True, cwd=REPO)
    record_path = workdir / "run.json"
    previous = json.loads(record_path.read_text())["wall_seconds"] if record_path.exists() else 0
    record = {"command": shlex.join(cmd), "wall_seconds": previous + time.time() - start}
    record_path.write_text(json.dumps(record, indent=2))


def read_records(workdir: Path) -> list[dict[str, Any]]:
    """Every record (training logs and dev evaluations) of the run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def learning_curve(records: list[dict[str, Any]], split: str, task: str) -> list[dict[str, float]]:
    """Per evaluation: step, dev early-exit GLUE score and the last logged train-batch accuracy.

    The train figure is the last exit's accuracy on the batch logged just before the evaluation
    (with dropout), absent for regression tasks.
    """
    curve, train_accuracy = [], None
    for record in records:
        if "accuracy_per_exit" in record:
            train_accuracy = record["accuracy_per_exit"][-1]
        score = evaluate.record_score(record, split, "early_exit", task)
        if score is not None:
            point = {"step": record["step"], "dev_score": round(100 * score, 2)}
            if train_accuracy is not None:
                point["train_batch_accuracy"] = round(100 * train_accuracy, 1)
            curve.append(point)
    return curve


def early_exit_metrics(record: dict[str, Any], split: str, exit_name: str = "early_exit") -> str:
    """`name=value` (percent) for the GLUE metrics of one exit in one evaluation record."""
    prefix = f"{split}/{exit_name}/"
    return " ".join(
        f"{key[len(prefix) :]}={100 * value:.2f}"
        for key, value in sorted(record.items())
        if key.startswith(prefix) and key[len(prefix) :] != "glue_score"
    )


def collect(run: sweeps.Run, workdir: Path) -> dict[str, Any]:
    """One table row from a finished run.

    Dev figures are GLUE scores (`metrics.glue_score`, percent) at the evaluation the recipe keeps
    (best early-exit GLUE score); the last exit is also given at its own best evaluation.
    """
    summary = json.loads((workdir / "summary.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    task, num_layers = config["task"], summary["L"]
    records = read_records(workdir)
    report = evaluate.selection_report(records, task, num_layers)
    split, kept = report["split"], report["kept"]
    wall = json.loads((workdir / "run.json").read_text())["wall_seconds"]
    binarized = config["model"]["binarize"]
    return {
        "run": run.name,
        "group": run.group,
        **dict(run.tags),
        "tags": dict(run.tags),
        "overrides": " ".join(f"{k}={v}" for k, v in run.overrides),
        "score": SCORE_NAMES.get(task, metrics.primary_metric_name(task)),
        "kept_step": report["kept_step"],
        "early_exit": round(100 * report["early_exit"], 2),
        "last_exit": round(100 * report["last_exit"], 2),
        # The last exit at its own best evaluation: claim 2 (early exit >= last exit) compares
        # each at its best, not at a checkpoint chosen by early exit.
        "last_exit_best": round(100 * report["last_exit_best"], 2),
        "last_exit_best_step": report["last_exit_best_step"],
        # Every GLUE metric of the task at the kept evaluation (e.g. MRPC accuracy and F1).
        "early_exit_metrics": early_exit_metrics(kept, split),
        "last_exit_metrics": early_exit_metrics(kept, split, f"exit_{num_layers}"),
        "final_early_exit": early_exit_metrics(report["final"], split),
        "by_evaluation": learning_curve(records, split, task),
        "mean_exit_block": round(kept[f"{split}/mean_exit_block"], 2),
        "flops_saved_pct": round(100 * kept[f"{split}/flops_saved"], 1),
        # A full-precision model is stored as float32: nothing is packed.
        "size_ratio": round(summary["size"]["ratio"], 2) if binarized else 1.0,
        "packed_bytes": summary["size"]["packed_bytes"] if binarized else None,
        "float32_bytes": summary["size"]["float32_bytes"],
        "vocab_size": summary["vocab_size"],
        "train_minutes": round(wall / 60, 1),
        "exit_histogram": kept[f"{split}/exit_histogram"],
        "workdir": relative(workdir),
        "command": json.loads((workdir / "run.json").read_text())["command"],
    }


# How GLUE combines a task's metrics into its score (`metrics.glue_score`).
SCORE_NAMES = {
    "mrpc": "mean(F1, accuracy)",
    "qqp": "mean(F1, accuracy)",
    "stsb": "mean(Pearson, Spearman)",
}
AGGREGATED = ("early_exit", "last_exit", "last_exit_best", "mean_exit_block", "flops_saved_pct")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in their seed, summarized: mean, sample std and n of each figure."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for group, members in groups.items():
        tags = {k: v for k, v in members[0]["tags"].items() if k != "seed"}
        summary = {"group": group, **tags, "n": len(members), "score": members[0]["score"]}
        for name in AGGREGATED:
            values = np.array([m[name] for m in members], float)
            summary[name] = round(float(values.mean()), 2)
            summary[f"{name}_std"] = (
                round(float(values.std(ddof=1)), 2) if len(values) > 1 else None
            )
        out.append(summary)
    return out


def compare_to_baseline(
    summaries: list[dict[str, Any]], tag: str = "change", baseline: str = "none"
) -> list[dict[str, Any]]:
    """Each configuration against the baseline of its task: difference of the seed means and
    its standard error, from the task's pooled seed standard deviation (with two seeds a run's own
    standard deviation is too rough). A difference beyond two standard errors is a verdict;
    anything smaller is noise."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:  # Sweeps without both tags (target: no task) have no baseline.
        if tag in summary and "task" in summary:
            by_task.setdefault(summary["task"], []).append(summary)
    out = []
    for task, members in by_task.items():
        base = next((m for m in members if m[tag] == baseline), None)
        if base is None:
            continue
        row_out = {"task": task}
        for name in ("early_exit", "last_exit_best"):
            variances = [m[f"{name}_std"] ** 2 for m in members if m[f"{name}_std"] is not None]
            row_out[f"{name}_pooled_std"] = (
                round(float(np.sqrt(np.mean(variances))), 2) if variances else None
            )
        for member in members:
            if member is base:
                continue
            row = {**row_out, tag: member[tag], "n": member["n"], "baseline_n": base["n"]}
            for name in ("early_exit", "last_exit_best", "flops_saved_pct"):
                row[name] = member[name]
                row[f"{name}_baseline"] = base[name]
                row[f"{name}_difference"] = round(member[name] - base[name], 2)
            pooled = row["early_exit_pooled_std"]
            if pooled is None:
                row["standard_error"], row["verdict"] = None, "one seed: no verdict"
            else:
                error = pooled * float(np.sqrt(1 / member["n"] + 1 / base["n"]))
                difference = row["early_exit_difference"]
                row["standard_error"] = round(error, 2)
                row["verdict"] = (
                    "within noise"
                    if abs(difference) < 2 * error
                    else ("better" if difference > 0 else "worse")
                )
            out.append(row)
    return out


def merge_rows(
    runs: list[sweeps.Run], fresh: list[dict[str, Any]], committed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The sweep's table: rows of runs finished in this root, and the committed rows of runs that
    finished elsewhere (an earlier machine), in the sweep's order."""
    by_name = {row["run"]: row for row in committed} | {row["run"]: row for row in fresh}
    return [by_name[r.name] for r in runs if r.name in by_name]


def write_table(rows: list[dict[str, Any]], stem: Path) -> None:
    """Writes rows as Markdown, CSV and JSON next to each other."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    hidden = (
        "group",
        "tags",
        "workdir",
        "exit_histogram",
        "overrides",
        "command",
        "by_evaluation",
        "packed_bytes",
        "float32_bytes",
        "final_early_exit",
    )
    shown = [c for c in columns if c not in hidden]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in shown) + " |" for row in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    """Runs the sweep's missing runs, then tabulates all finished ones (here or committed)."""
    del argv
    runs = sweeps.get_sweep(_SWEEP.value, _BUDGET.value)
    unknown = set(_ONLY.value) - {r.name for r in runs}
    if unknown:
        raise app.UsageError(f"Unknown runs {sorted(unknown)}; valid: {[r.name for r in runs]}.")
    selected = [r for r in runs if not _ONLY.value or r.name in _ONLY.value]
    root = Path(_ROOT.value)
    for run in [] if _COLLECT_ONLY.value else selected:
        if not (root / run.name / "summary.json").exists():
            train(run, root / run.name)
    # The table holds every finished run of the sweep, also those of earlier invocations.
    rows = [collect(r, root / r.name) for r in runs if (root / r.name / "summary.json").exists()]
    if not rows:  # Keep the committed tables: this root holds none of the sweep's runs.
        print(f"No finished runs of {_SWEEP.value} in {root}; no table written.")
        return
    table = Path(_RESULTS.value, _SWEEP.value).with_suffix(".json")
    if table.exists():  # Runs finished on another machine keep their committed rows.
        rows = merge_rows(runs, rows, json.loads(table.read_text()))
    write_table(rows, Path(_RESULTS.value) / _SWEEP.value)
    # Mean and standard deviation over the seeds of each configuration.
    summaries = aggregate(rows)
    write_table(summaries, Path(_RESULTS.value) / f"{_SWEEP.value}_seeds")
    comparisons = compare_to_baseline(summaries)
    if comparisons:  # Sweeps of changes against a baseline (recipe).
        write_table(comparisons, Path(_RESULTS.value) / f"{_SWEEP.value}_vs_baseline")
    print(Path(_RESULTS.value, _SWEEP.value).with_suffix(".md").read_text())


if __name__ == "__main__":
    app.run(main)
