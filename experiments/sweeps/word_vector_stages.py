"""The word-vector stages of the `word_vectors` sweep, then their record.

  python experiments/sweeps/word_vector_stages.py --root=runs --glue_dir=../shared/data/glue

Two stages of `--config.objective=word_vectors` (beex_jax/word_vectors.py), each with the
vocabulary learned from its own corpus: `<root>/wv-glue` on the train text of every local GLUE
task, and `<root>/wv-imdb` on that text plus the IMDB reviews (`--text_files`; 23M words, the
unlabeled corpus in ../shared/data/text/imdb). A stage whose summary.json exists is skipped.
Writes experiments/results/word_vector_stages.json: each stage's command, wall time, corpus size,
Word2Vec seconds and throughput, and the nearest tokens of a few probe words.
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

from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiments import machine  # noqa: E402
from experiments.paths import command_line, relative  # noqa: E402

IMDB = "../shared/data/text/imdb/imdb_*.txt.xz"
STAGES = ("wv-glue", "wv-imdb")
_ROOT = flags.DEFINE_string("root", "runs", "Stage workdirs go to <root>/wv-glue, wv-imdb.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data (shared with the sweeps).")
_TEXT_FILES = flags.DEFINE_string("text_files", IMDB, "Unlabeled text of the wv-imdb stage.")
_STAGES = flags.DEFINE_list("stages", list(STAGES), "Stages to run, in order.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/results"), "Output folder.")


def stage_command(name: str) -> list[str]:
    """The repo-relative command line of one stage."""
    cmd = [
        "python",
        "-m",
        "beex_jax.main",
        "--mode=pretrain",
        "--config=configs/pretrain.py",
        f"--workdir={relative(Path(_ROOT.value))}/{name}",
        f"--config.data.glue_dir={relative(Path(_GLUE_DIR.value))}",
        f"--config.data.tfds_dir={relative(Path(_TFDS_DIR.value))}",
        "--config.objective=word_vectors",
    ]
    if name == "wv-imdb":
        files = [relative(p) if p.startswith("/") else p for p in _TEXT_FILES.value.split(",")]
        cmd.append(f"--config.data.text_files={','.join(files)}")
    return cmd


def main(argv: list[str]) -> None:
    """Runs the unfinished stages, then writes experiments/results/word_vector_stages.json."""
    del argv
    unknown = set(_STAGES.value) - set(STAGES)
    if unknown:
        raise app.UsageError(f"Unknown stages {sorted(unknown)}; valid: {', '.join(STAGES)}.")
    records: list[dict[str, Any]] = []
    for name in _STAGES.value:
        workdir = Path(_ROOT.value) / name
        cmd = stage_command(name)
        if not (workdir / "summary.json").exists():
            print(f"\n### {name}\n$ {shlex.join(cmd)}", flush=True)
            start = time.time()
            subprocess.run([sys.executable, *cmd[1:]], check=True, cwd=REPO)
            elapsed = {"wall_seconds": time.time() - start}
            (workdir / "run.json").write_text(json.dumps({"command": shlex.join(cmd), **elapsed}))
        summary = json.loads((workdir / "summary.json").read_text())
        run = workdir / "run.json"
        wall = json.loads(run.read_text())["wall_seconds"] / 60 if run.exists() else None
        records.append(
            {
                "stage": name,
                "command": shlex.join(cmd),
                "wall_minutes": wall if wall is not None else summary["wall_minutes_this_run"],
                "summary": summary,
            }
        )
    out = {
        "command": command_line(["experiments/sweeps/word_vector_stages.py", *sys.argv[1:]]),
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count()},
        "load_average": os.getloadavg(),
        "stages": records,
    }
    path = Path(_RESULTS.value) / "word_vector_stages.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Wrote {relative(path)}")


if __name__ == "__main__":
    app.run(main)
