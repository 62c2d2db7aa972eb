"""Prints the table of experiments/results/topic_self_pretraining.md from the committed sweep JSON.

  python experiments/sweeps/pretrained_table.py \
      [--summaries=experiments/results/pretrained_seeds.json]

Per task and precision, every fine-tuning start (a pretrained body, a checkpoint of it, a gentler
or frozen body) against its baseline (`experiments.stats.baseline_start`: the same model from
scratch, or frozen untrained) at the same budget and seeds: early exit and
last exit at its own best (mean ± std over seeds), the difference of the early exits, its
standard error from the seeds and the dev set's sampling error, and a verdict: a difference under
two of the larger standard error is noise.
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
    baseline_start,
    dev_standard_error,
    seed_standard_error,
    verdict,
)

_SUMMARIES = flags.DEFINE_string(
    "summaries",
    str(REPO / "experiments/results/pretrained_seeds.json"),
    "Seed summaries of the `pretrained` sweep.",
)


def _score(summary: dict[str, Any], key: str) -> str:
    std = summary.get(f"{key}_std")
    return f"{summary[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def comparison_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: each start against its baseline start of the same task and precision."""
    by_start = {(s["task"], s["precision"], s["start"]): s for s in summaries}
    lines = [
        "| task | precision | start | pretraining steps | seeds | early exit | last exit (own best)"
        " | baseline | baseline early exit | difference | seed SE | dev SE | verdict"
        " | FLOPs saved |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        baseline = baseline_start(summary["start"])
        base = by_start.get((summary["task"], summary["precision"], baseline))
        if base is None:
            continue
        difference = summary["early_exit"] - base["early_exit"]
        seed_error = seed_standard_error(summary, base)
        dev_error = dev_standard_error(
            summary["score"], base["early_exit"], DEV_EXAMPLES[summary["task"]]
        )
        judged = verdict(difference, max(dev_error, seed_error or 0.0))
        seed_text = f"{seed_error:.2f}" if seed_error is not None else "-"
        lines.append(
            f"| {summary['task']} | {summary['precision']} | {summary['start']} | "
            f"{summary.get('pretraining_steps') or '-'} | {summary['n']} | "
            f"{_score(summary, 'early_exit')} | {_score(summary, 'last_exit_best')} | "
            f"{baseline} | {_score(base, 'early_exit')} | {difference:+.2f} | {seed_text} | "
            f"{dev_error:.2f} | {judged} | {summary['flops_saved_pct']:.1f}% |"
        )
    return lines


def main(argv: list[str]) -> None:
    """Prints the comparison table."""
    del argv
    summaries = json.loads(Path(_SUMMARIES.value).read_text())
    print("\n".join(comparison_lines(summaries)))


if __name__ == "__main__":
    app.run(main)
