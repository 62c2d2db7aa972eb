"""Self-pretraining of the shared body for the `pretrained` sweep, then its record.

  python experiments/sweeps/pretrain.py --root=runs --glue_dir=../shared/data/glue

Two stages on the default corpus (the train text of every local GLUE task), both pre-LN:
full-precision MLM (`<root>/pretrain-float`), then binarization-aware MLM initialised from it
(`<root>/pretrain`, what `--config.init_from` of the fine-tuning runs names). Each stage resumes
if interrupted and is skipped once finished. Writes experiments/results/pretrain.json: each
stage's command, wall time, throughput and held-out masked-token accuracy per evaluation.

A probe of one lever changes config fields of every stage and writes its own record, e.g.

  python experiments/sweeps/pretrain.py --root=runs/probe-lr3e-3 --stages=pretrain-float \
      --overrides=optim.learning_rate=3e-3 --record=pretrain_lr3e-3
"""

from __future__ import annotations

import json
import os
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

from beex_jax.data import corpus  # noqa: E402
from beex_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from configs import pretrain as pretrain_config  # noqa: E402
from experiments import machine  # noqa: E402
from experiments.paths import relative  # noqa: E402

# (workdir name, overrides): the binarized stage starts from the full-precision one.
STAGES = (
    ("pretrain-float", (("model.binarize", False),)),
    ("pretrain", (("model.binarize", True), ("init_from", "{root}/pretrain-float"))),
)
_ROOT = flags.DEFINE_string("root", "runs", "Stage workdirs go to <root>/pretrain-float, pretrain.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data (shared with the sweeps).")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps of each stage.")
_STAGES = flags.DEFINE_list("stages", [name for name, _ in STAGES], "Stages to run, in order.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False, "Only write the record.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/results"), "Output folder.")
_OVERRIDES = flags.DEFINE_list(
    "overrides", [], "Extra `key=value` config overrides of every stage (a pretraining probe)."
)
_RECORD = flags.DEFINE_string("record", "pretrain", "Name of the record: <results>/<record>.json.")

# Batch 16 rows (2k tokens): on a 2-core CPU the number of updates, not the tokens per update,
# is what a 25-minute stage is short of (batch 64 stayed at the word-frequency stage).
COMMON = (
    ("model.norm", "pre"),
    ("batch_size", 16),
    ("eval_every_steps", 250),
    ("checkpoint_every_steps", 250),
    ("keep_period", 500),
)


def script_command() -> str:
    """This script's repo-relative command line, as the record names it."""
    command = (
        f"python experiments/sweeps/pretrain.py --root={relative(Path(_ROOT.value))} "
        f"--steps={_STEPS.value} --stages={','.join(_STAGES.value)}"
    )
    if _OVERRIDES.value:
        command += f" --overrides={','.join(_OVERRIDES.value)}"
    if _RECORD.value != _RECORD.default:
        command += f" --record={_RECORD.value}"
    return command


def stage_command(name: str, overrides: tuple[tuple[str, object], ...]) -> list[str]:
    """The repo-relative command line of one stage."""
    root = relative(Path(_ROOT.value))
    cmd = [
        "python",
        "-m",
        "beex_jax.main",
        "--mode=pretrain",
        "--config=configs/pretrain.py",
        f"--workdir={root}/{name}",
        f"--config.data.glue_dir={relative(Path(_GLUE_DIR.value))}",
        f"--config.data.tfds_dir={relative(Path(_TFDS_DIR.value))}",
        f"--config.num_train_steps={_STEPS.value}",
    ]
    for key, value in (*COMMON, *overrides, *extra_overrides()):
        cmd.append(f"--config.{key}={str(value).format(root=root)}")
    return cmd


def extra_overrides() -> tuple[tuple[str, str], ...]:
    """`--overrides` as (key, value) pairs; each must name a field of the pretraining config."""
    pairs, config = [], pretrain_config.get_config()
    for item in _OVERRIDES.value:
        key, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"--overrides item {item!r} is not key=value.")
        node = config
        for part in key.split("."):
            if part not in node:
                raise app.UsageError(f"--overrides: {key!r} is not a pretraining config field.")
            node = node[part]
        pairs.append((key, value))
    return tuple(pairs)


def finished(workdir: Path) -> bool:
    """Whether the stage's summary says it reached the planned steps."""
    summary = workdir / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["step"] >= _STEPS.value


# Held-out metrics kept in the record's curve: the MLM's (with ELECTRA: the generator's), and
# the replaced-token detection of ELECTRA's body with the share of replaced tokens.
CURVE_KEYS = ("mlm_accuracy", "mlm_loss", "rtd_accuracy", "rtd_loss", "replaced_fraction")


def collect(name: str, cmd: list[str], workdir: Path) -> dict[str, Any]:
    """One stage's record: command, cost and held-out curve."""
    summary = json.loads((workdir / "summary.json").read_text())
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        {
            "step": r["step"],
            **{
                key: r[f"heldout/{key}"]
                for key in CURVE_KEYS
                if f"heldout/{key}" in r  # RTD ones only with config.objective=electra.
            },
        }
        for r in records
        if "heldout/mlm_accuracy" in r
    ]
    run = json.loads((workdir / "run.json").read_text()) if (workdir / "run.json").exists() else {}
    return {
        "stage": name,
        "command": shlex.join(cmd),
        "wall_minutes": run["wall_seconds"] / 60 if run else summary["wall_minutes_this_run"],
        "summary": summary,
        "heldout_curve": curve,
    }


def unigram_baseline(workdir: Path) -> dict[str, float]:
    """Held-out masked-token accuracy and loss of predicting every token by its corpus frequency
    (the word-frequency stage an MLM passes through first), with the stage's vocabulary."""
    config = pretrain_config.get_config()
    config.unlock()
    config.data.glue_dir = _GLUE_DIR.value
    config.data.tfds_dir = _TFDS_DIR.value
    tokenizer = tokenizer_lib.tokenizer_from_vocab(str(workdir / "vocab.txt"))
    input_ = corpus.create_input(
        config, tokenizer, corpus.collect_units(config), process_index=0, process_count=1
    )
    special = list(input_.special_token_ids().values())
    log_p = corpus.log_unigram_prior(input_.train, input_.vocab_size, special)
    ids = input_.heldout.input_ids[input_.heldout.mask.astype(bool)]
    heldout = ids[~np.isin(ids, special)]
    return {
        "mlm_accuracy": float(np.mean(heldout == np.argmax(log_p))),
        "mlm_loss": float(-np.mean(log_p[heldout])),
    }


def main(argv: list[str]) -> None:
    """Runs the unfinished stages, then writes experiments/results/<record>.json."""
    del argv
    stages = []
    for name, overrides in STAGES:
        if name not in _STAGES.value:
            continue
        workdir = Path(_ROOT.value) / name
        cmd = stage_command(name, overrides)
        if not _COLLECT_ONLY.value and not finished(workdir):
            print(f"\n### {name}\n$ {shlex.join(cmd)}", flush=True)
            start = time.time()
            subprocess.run([sys.executable, *cmd[1:]], check=True, cwd=REPO)
            record_path = workdir / "run.json"
            previous = (
                json.loads(record_path.read_text())["wall_seconds"] if record_path.exists() else 0
            )
            elapsed = previous + time.time() - start
            record = {"command": shlex.join(cmd), "wall_seconds": elapsed}
            record_path.write_text(json.dumps(record))
        stages.append(collect(name, cmd, workdir))
    out = {
        "command": script_command(),
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count()},
        "load_average": os.getloadavg(),
        "stages": stages,
        "unigram_baseline": unigram_baseline(Path(_ROOT.value) / _STAGES.value[-1]),
    }
    path = Path(_RESULTS.value) / f"{_RECORD.value}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Wrote {relative(path)}")


if __name__ == "__main__":
    app.run(main)
