"""Runs a sweep of training runs one after another (resumable) and tabulates their results.

  python experiments/sweep.py --sweep=reproduction --root=runs/sweeps \
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

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beex_jax import metrics  # noqa: E402
from configs import sweeps  # noqa: E402

_SWEEP = flags.DEFINE_enum("sweep", "reproduction", sorted(sweeps.SWEEPS), "Which sweep.")
_BUDGET = flags.DEFINE_enum("budget", "cpu", ["cpu", "full"], "Per-task training budget.")
_ROOT = flags.DEFINE_string("root", "runs/sweeps", "Workdirs go to <root>/<run>.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data (shared by runs).")
_ONLY = flags.DEFINE_list("only", [], "Run only these run names.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False, "Only tabulate finished runs.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/results"), "Output folder.")


def run_command(run: sweeps.Run, workdir: Path) -> list[str]:
    """The training command line of one run."""
    cmd = [
        sys.executable,
        "-m",
        "beex_jax.main",
        f"--config={REPO / 'configs/glue.py'}:{run.variant}",
        f"--workdir={workdir}",
        f"--config.data.glue_dir={_GLUE_DIR.value}",
        f"--config.data.tfds_dir={_TFDS_DIR.value}",
    ]
    return cmd + [f"--config.{key}={value}" for key, value in run.overrides]


def train(run: sweeps.Run, workdir: Path) -> None:
    """Runs (or resumes) one training run and records its command and wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = run_command(run, workdir)
    print(f"\n### {run.name}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    record_path = workdir / "run.json"
    previous = json.loads(record_path.read_text())["wall_seconds"] if record_path.exists() else 0
    record = {"command": shlex.join(cmd), "wall_seconds": previous + time.time() - start}
    record_path.write_text(json.dumps(record, indent=2))


def read_records(workdir: Path) -> list[dict[str, Any]]:
    """Every record (training logs and dev evaluations) of the run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def primary_score(record: dict[str, Any], primary: str) -> float | None:
    """The early-exit primary metric of a dev evaluation record (None for other records)."""
    return next((v for k, v in record.items() if k.endswith(f"/early_exit/{primary}")), None)


def best_evaluation(evaluations: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """The evaluation with the best early-exit primary metric (the earliest of equal ones)."""
    return max(evaluations, key=lambda record: primary_score(record, primary))


def learning_curve(
    records: list[dict[str, Any]], split: str, primary: str
) -> list[dict[str, float]]:
    """Per evaluation: step, dev early-exit metric and the last logged train-batch accuracy.

    The train figure is the last exit's accuracy on the batch logged just before the evaluation
    (with dropout), absent for regression tasks.
    """
    curve, train_accuracy = [], None
    key = f"{split}/early_exit/{primary}"
    for record in records:
        if "accuracy_per_exit" in record:
            train_accuracy = record["accuracy_per_exit"][-1]
        if key in record:
            point = {"step": record["step"], f"dev_{primary}": round(100 * record[key], 2)}
            if train_accuracy is not None:
                point["train_batch_accuracy"] = round(100 * train_accuracy, 1)
            curve.append(point)
    return curve


def early_exit_metrics(record: dict[str, Any], split: str, skip: str = "") -> str:
    """`name=value` (percent) for the early-exit metrics of one evaluation record."""
    prefix = f"{split}/early_exit/"
    return " ".join(
        f"{key[len(prefix) :]}={100 * value:.2f}"
        for key, value in sorted(record.items())
        if key.startswith(prefix) and key[len(prefix) :] != skip
    )


def collect(run: sweeps.Run, workdir: Path) -> dict[str, Any]:
    """One table row from a finished run."""
    summary = json.loads((workdir / "summary.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    task, num_layers = config["task"], summary["L"]
    primary = metrics.primary_metric_name(task)
    records = read_records(workdir)
    evaluations = [r for r in records if primary_score(r, primary) is not None]
    if not evaluations:
        raise ValueError(f"No dev evaluation in {workdir / 'metrics.jsonl'}.")
    best = best_evaluation(evaluations, primary)
    split = next(k.split("/")[0] for k in best if k.endswith(f"/early_exit/{primary}"))
    run_record = json.loads((workdir / "run.json").read_text())
    wall = run_record["wall_seconds"]
    return {
        "run": run.name,
        **dict(run.tags),
        "overrides": " ".join(f"{k}={v}" for k, v in run.overrides),
        "metric": primary,
        "best_step": best["step"],
        "early_exit": round(100 * best[f"{split}/early_exit/{primary}"], 2),
        "last_exit": round(100 * best[f"{split}/exit_{num_layers}/{primary}"], 2),
        # The task's other GLUE metrics at the same evaluation (e.g. MRPC accuracy beside F1).
        "other_early_exit": early_exit_metrics(best, split, skip=primary),
        # Every early-exit metric at the end of training (the best evaluation may be an early
        # one, e.g. a model answering MRPC's majority class, whose F1 is high).
        "final_early_exit": early_exit_metrics(evaluations[-1], split),
        "by_evaluation": learning_curve(records, split, primary),
        "mean_exit_block": round(best[f"{split}/mean_exit_block"], 2),
        "flops_saved_pct": round(100 * best[f"{split}/flops_saved"], 1),
        # A full-precision model is stored as float32: nothing is packed (older summaries of
        # float runs carried the ratio their parameters would have if binarized).
        "size_ratio": round(summary["size"]["ratio"], 2) if config["model"]["binarize"] else 1.0,
        "packed_bytes": summary["size"]["packed_bytes"] if config["model"]["binarize"] else None,
        "float32_bytes": summary["size"]["float32_bytes"],
        "vocab_size": summary["vocab_size"],
        "train_minutes": round(wall / 60, 1),
        "exit_histogram": best[f"{split}/exit_histogram"],
        "workdir": str(workdir),
        "command": run_record["command"],
    }


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
        "workdir",
        "exit_histogram",
        "overrides",
        "command",
        "by_evaluation",
        "packed_bytes",
        "float32_bytes",
    )
    shown = [c for c in columns if c not in hidden]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in shown) + " |" for row in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    """Runs the sweep's missing runs, then tabulates all finished ones."""
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
    write_table(rows, Path(_RESULTS.value) / _SWEEP.value)
    print(Path(_RESULTS.value, _SWEEP.value).with_suffix(".md").read_text())


if __name__ == "__main__":
    app.run(main)
