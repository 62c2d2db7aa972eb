"""Paired comparison of fine-tuned models on the same GLUE dev examples.

  python experiments/sweeps/paired_dev.py --root=runs/sweeps --seeds=0,1 \
      --comparisons='sst2-pretrainedalibilong-s{seed}:sst2-scratch-alibi-s{seed}'

Each comparison `A:B` names two sweep workdirs (`{seed}` filled from --seeds; the same seed pairs
A with B). Both models (their kept, best checkpoints, through `beex_jax.load`) predict the dev
split with early exit; the script recomputes each GLUE score, then the difference of the
seed-mean scores with two standard errors: over seeds, and over the dev examples by a paired
bootstrap (both models scored on the same resample, so examples both get right or wrong cancel;
the results tables' unpaired dev SE treats the two scores as independent and is larger). For
classification tasks it adds an exact McNemar test per seed. The verdict is noise when the
difference is under two of the larger standard error. Writes experiments/results/paired_dev.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import beex_jax  # noqa: E402
from beex_jax.data import glue_builder, pipeline  # noqa: E402
from experiments import machine  # noqa: E402
from experiments.paths import command_line  # noqa: E402
from experiments.stats import paired_comparison  # noqa: E402

_ROOT = flags.DEFINE_string("root", "runs/sweeps", "Folder of the sweep workdirs.")
_COMPARISONS = flags.DEFINE_list("comparisons", [], "A:B workdir names, `{seed}` filled in.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds that pair A with B.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared GLUE data.")
_SAMPLES = flags.DEFINE_integer("samples", 2000, "Bootstrap resamples of the dev examples.")
_OUT = flags.DEFINE_string("out", str(REPO / "experiments/results/paired_dev.json"), "Output JSON.")


def dev_predictions(workdir: str, tfds_dir: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The task, early-exit dev predictions (class ids or STS-B scores) and dev labels."""
    predictor = beex_jax.load(workdir)
    task = predictor.task
    columns = glue_builder.read_split(task, tfds_dir, pipeline.eval_split_names(task)[0])
    texts = list(zip(*(columns[name] for name in predictor.text_fields), strict=True))
    records = predictor.predict(texts)
    key = "score" if task == "stsb" else "label"
    return task, np.array([r[key] for r in records]), columns["label"]


def main(argv: list[str]) -> None:
    """Runs every comparison and writes the JSON record."""
    del argv
    for comparison in _COMPARISONS.value:
        if comparison.count(":") != 1:
            raise app.UsageError(f"--comparisons item {comparison!r} is not A:B.")
    missing = [
        str(Path(_ROOT.value) / name.format(seed=seed))
        for comparison in _COMPARISONS.value
        for name in comparison.split(":")
        for seed in _SEEDS.value
        if not (Path(_ROOT.value) / name.format(seed=seed) / "config.json").is_file()
    ]
    if missing:
        raise app.UsageError(f"No training workdir at: {', '.join(missing)}.")
    results = []
    for comparison in _COMPARISONS.value:
        a_name, b_name = comparison.split(":")  # Checked above: every name exists.
        a_predictions, b_predictions, labels, task = [], [], None, None
        for seed in _SEEDS.value:
            for name, into in ((a_name, a_predictions), (b_name, b_predictions)):
                workdir = str(Path(_ROOT.value) / name.format(seed=seed))
                task, predictions, labels = dev_predictions(workdir, _TFDS_DIR.value)
                into.append(predictions)
        result = {"task": task, "a": a_name, "b": b_name, "seeds": _SEEDS.value}
        result |= paired_comparison(
            task, a_predictions, b_predictions, labels, samples=_SAMPLES.value
        )
        seed_se = result["seed_se"]
        print(
            f"{task}: {a_name} {np.mean(result['a_scores']):.2f} vs {b_name} "
            f"{np.mean(result['b_scores']):.2f}: {result['difference']:+.2f} (paired dev SE "
            f"{result['paired_dev']['se']:.2f}, seed SE "
            f"{'-' if seed_se is None else f'{seed_se:.2f}'}): {result['verdict']}"
        )
        results.append(result)
    record = {"command": command_line(sys.argv), "machine": machine.describe(), "results": results}
    Path(_OUT.value).write_text(json.dumps(record, indent=2) + "\n")
    print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
