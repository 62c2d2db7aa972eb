"""How much of a task's dev text lands on rarely trained vocabulary entries, per vocabulary.

  python experiments/probes/vocab_coverage.py --tasks=stsb,rte,sst2 --min_frequencies=0,3 \
      --glue_dir=../shared/data/glue --tfds_dir=runs/tfds

For each task and `data.vocab_min_frequency`, learns the task's WordPiece vocabulary as training
does (`tokenizer.learn_vocab` on the train split), then counts each entry's occurrences in the
tokenized train text and reports the share of dev tokens on entries seen fewer than `--rare`
times in train. Writes experiments/results/vocab_coverage.json with the command.
"""

from __future__ import annotations

import collections
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beex_jax.data import glue_builder, pipeline, tokenizer  # noqa: E402
from experiments.paths import relative  # noqa: E402

_TASKS = flags.DEFINE_list("tasks", ["stsb", "rte", "sst2"], "GLUE tasks.")
_MIN_FREQUENCIES = flags.DEFINE_list("min_frequencies", ["0", "3"], "vocab_min_frequency values.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 16000, "Largest learned vocabulary.")
_RARE = flags.DEFINE_integer("rare", 3, "An entry seen fewer times than this in train is rare.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "experiments/results/vocab_coverage.json"), "Output JSON."
)


def coverage(task: str, min_frequency: int) -> dict[str, Any]:
    """Vocabulary size and the share of dev tokens on entries rare in train."""
    glue_builder.prepare(task, _TFDS_DIR.value, glue_dir=_GLUE_DIR.value)
    train = tokenizer.split_texts(task, _TFDS_DIR.value, "train")
    dev = tokenizer.split_texts(task, _TFDS_DIR.value, pipeline.eval_split_names(task)[0])
    vocab = tokenizer.learn_vocab(train, _VOCAB_SIZE.value, min_frequency)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "vocab.txt")
        path.write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
        tok = tokenizer.tokenizer_from_vocab(str(path))
    train_encodings = tok.encode_batch(train, add_special_tokens=False)
    seen = collections.Counter(i for enc in train_encodings for i in enc.ids)
    dev_ids = [i for enc in tok.encode_batch(dev, add_special_tokens=False) for i in enc.ids]
    rare_entries = sum(1 for i in range(len(vocab)) if seen[i] < _RARE.value)
    rare_dev = sum(1 for i in dev_ids if seen[i] < _RARE.value)
    return {
        "task": task,
        "min_frequency": min_frequency,
        "vocab_size": len(vocab),
        "entries_seen_fewer_than_rare": rare_entries,
        "dev_tokens": len(dev_ids),
        "dev_token_share_on_rare_entries_pct": round(100 * rare_dev / len(dev_ids), 2),
    }


def main(argv: list[str]) -> None:
    """Measures every task x min_frequency and writes the JSON."""
    del argv
    rows = [coverage(t, int(m)) for t in _TASKS.value for m in _MIN_FREQUENCIES.value]
    for row in rows:
        print(row)
    command = [
        "python",
        "experiments/probes/vocab_coverage.py",
        f"--tasks={','.join(_TASKS.value)}",
        f"--min_frequencies={','.join(_MIN_FREQUENCIES.value)}",
        f"--rare={_RARE.value}",
        f"--glue_dir={relative(Path(_GLUE_DIR.value))}",
        f"--tfds_dir={relative(Path(_TFDS_DIR.value))}",
    ]
    out = {"command": shlex.join(command), "rare_below": _RARE.value, "rows": rows}
    Path(_OUT.value).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
