"""How much of a pretrained token table's sign pattern survives fine-tuning.

  python experiments/probes/sign_retention.py --source=runs/wv-imdb \
      --runs=runs/sweeps/stsb-wvimdb-s0,runs/sweeps/stsb-wvimdb-slowtable-s0,runs/sweeps/stsb-scratch-imdbvocab-s0

The binarized embedding the model sees is alpha * sign(W): its information is the sign pattern.
For each fine-tuned run (its latest checkpoint), the share of the table's entries whose sign
equals the source's (a word-vector or pretraining workdir with the same vocabulary), by how often
the token occurs in the run's train split (0.5 is chance: a run from scratch shows it). Writes
experiments/results/sign_retention.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beex_jax import checkpointing, init_from  # noqa: E402
from beex_jax.data import glue_builder, tokenizer  # noqa: E402
from experiments.paths import command_line, relative  # noqa: E402

_SOURCE = flags.DEFINE_string("source", None, "Workdir whose token table the runs started from.")
_RUNS = flags.DEFINE_list("runs", [], "Fine-tuned workdirs.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared GLUE data.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "experiments/results/sign_retention.json"), "Output JSON."
)
# Bands of train-split occurrences of a token.
BANDS = ((0, 1), (1, 5), (5, 50), (50, None))
TABLE = ("embed", "token", "binary_embedding")


def token_counts(workdir: str, vocab_size: int) -> np.ndarray:
    """Occurrences of every vocabulary token in the run's train split."""
    config = checkpointing.read_config(workdir)
    tok = tokenizer.tokenizer_from_vocab(config.data.vocab_file)
    columns = glue_builder.read_split(config.task, _TFDS_DIR.value, "train")
    fields = tokenizer.text_fields(config.task)
    texts = [t for field in fields for t in columns[field]]
    ids = [i for e in tok.encode_batch(list(texts), add_special_tokens=False) for i in e.ids]
    return np.bincount(np.asarray(ids, np.int64), minlength=vocab_size)[:vocab_size]


def main(argv: list[str]) -> None:
    """Prints and writes the sign agreement of every run with the source, by token frequency."""
    del argv
    source = init_from.load_params(_SOURCE.value)
    for name in TABLE:
        source = source[name]
    rows = []
    for run in _RUNS.value:
        params, _ = checkpointing.restore_params(run, which="latest")
        table = np.asarray(params[TABLE[0]][TABLE[1]][TABLE[2]])
        if table.shape != source.shape:
            raise app.UsageError(f"{run}: table {table.shape} vs source {source.shape}.")
        counts = token_counts(run, table.shape[0])
        same = np.sign(table) == np.sign(source)
        row = {"run": relative(run), "all": round(float(same.mean()), 4)}
        for low, high in BANDS:
            band = (counts >= low) & (counts < (high if high is not None else np.inf))
            label = f"seen {low}+" if high is None else f"seen {low}-{high - 1}"
            row[label] = {
                "tokens": int(band.sum()),
                "agreement": round(float(same[band].mean()), 4),
            }
        print(json.dumps(row))
        rows.append(row)
    out = {"command": command_line(sys.argv), "source": relative(_SOURCE.value), "runs": rows}
    Path(_OUT.value).write_text(json.dumps(out, indent=2) + "\n")
    print(f"Wrote {relative(_OUT.value)}")


if __name__ == "__main__":
    flags.mark_flag_as_required("source")
    app.run(main)
