"""The results plots draw from sweep rows. `experiments/sweeps/plots.py` defines absl flags that
other experiment scripts define too, so it is imported in a subprocess of its own."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Draws the plot from the rows on stdin into argv[1], recording each line drawn; prints them.
SCRIPT = """
import json, sys
from pathlib import Path
from experiments.sweeps import plots
drawn, real_plot = {}, plots.plt.Axes.plot
def record_plot(ax, x, y, *args, **kwargs):
    drawn[kwargs.get("label")] = [list(x), list(y)]
    return real_plot(ax, x, y, *args, **kwargs)
plots.plt.Axes.plot = record_plot
path = plots.plot_pretraining_steps(json.load(sys.stdin), Path(sys.argv[1]))
print(json.dumps({"path": str(path), "drawn": drawn}))
"""


def _row(start: str, steps: int | None, early: float, overrides: str = "") -> dict:
    row = {
        "task": "stsb",
        "precision": "binary",
        "start": start,
        "early_exit": early,
        "last_exit_best": early - 1,
        "score": "mean(Pearson, Spearman)",
        "overrides": overrides,
    }
    if steps is not None:
        row["pretraining_steps"] = str(steps)
    return row


def test_pretraining_steps_plot_keeps_gentle_runs_off_the_line(tmp_path):
    rows = [
        _row("scratch", None, 18.0),
        _row("pretrained", 1000, 13.0),
        _row("pretrained-long@2500", 2500, 16.0),
        _row("pretrained-long", 5000, 20.0),
        _row("pretrained-long-gentle", 5000, 25.0, "optim.body_lr_scale=0.25 seed=0"),
        _row("scratch-alibi", None, 30.0),
        _row("pretrained-alibi", 1000, 31.0),
        _row("frozen-pretrained-alibi", 1000, 5.0),
        _row("pretrained-alibi-layerdecay", 1000, 40.0, "optim.layer_decay=0.8 seed=0"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert pathlib.Path(result["path"]).stat().st_size > 0
    # A line per pretraining run, each from the scratch runs; the gentle run (25.0) is a separate
    # marker, not part of the 5000-step mean.
    assert result["drawn"]["early exit, pretrained (mean)"] == [[0, 1000], [18.0, 13.0]]
    assert result["drawn"]["early exit, pretrained-long (mean)"] == [
        [0, 2500, 5000],
        [18.0, 16.0, 20.0],
    ]
    # An ALiBi body starts from the ALiBi model from scratch; a frozen-body probe is not drawn.
    assert result["drawn"]["early exit, pretrained-alibi (mean)"] == [[0, 1000], [30.0, 31.0]]
    assert len(result["drawn"]) == 6  # Early and last exit of the three runs.
