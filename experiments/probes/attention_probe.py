"""Does a pretrained body read context? Attention entropy and locality per block, on held-out text.

  python experiments/probes/attention_probe.py \
      --workdirs=runs/pretrain-long/pretrain-float,runs/pretrain-electra/pretrain-float \
      --glue_dir=../shared/data/glue [--rows=64] [--window=2]

For each pretraining workdir (its latest checkpoint, its own vocabulary and model config), and for
the same model with fresh parameters (seed 0), feeds the held-out rows of the pretraining corpus
(GLUE dev text packed into rows, as the held-out MLM metrics use) and records per block the
attention entropy and the share on the token itself and its `window` neighbours either side,
each beside its value for uniform attention (experiments/probes/attention_stats.py). Writes
experiments/results/attention_probe.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beex_jax import init_from  # noqa: E402
from beex_jax.data import corpus  # noqa: E402
from beex_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from beex_jax.mlm import init_params as init_body  # noqa: E402
from beex_jax.model import ModelConfig  # noqa: E402
from experiments import machine  # noqa: E402
from experiments.paths import command_line, relative  # noqa: E402
from experiments.probes import attention_stats  # noqa: E402

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Pretraining workdirs to probe.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", "../shared/data/glue", "Local GLUE folder.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "runs/tfds", "Prepared data (shared with the sweeps).")
_ROWS = flags.DEFINE_integer("rows", 64, "Held-out rows fed (at most the corpus's held-out rows).")
_WINDOW = flags.DEFINE_integer("window", 2, "Neighbours either side counted as near.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "experiments/results/attention_probe.json"), "Output JSON."
)


def probe(workdir: str) -> list[dict]:
    """The workdir's trained body and the same model freshly initialised, each with statistics."""
    config = init_from.source_config(workdir)
    config.data.glue_dir = _GLUE_DIR.value
    config.data.tfds_dir = _TFDS_DIR.value
    tokenizer = tokenizer_lib.tokenizer_from_vocab(init_from.source_vocab(workdir))
    input_ = corpus.create_input(
        config, tokenizer, corpus.collect_units(config), process_index=0, process_count=1
    )
    heldout, token_ids = input_.heldout, input_.special_token_ids()
    rows = slice(0, _ROWS.value)
    batch = [jnp.asarray(a[rows]) for a in (heldout.input_ids, heldout.segment_ids, heldout.mask)]
    model_config = ModelConfig.from_config(config.model)
    trained = init_from.load_params(workdir)
    fresh = init_body(model_config, jax.random.PRNGKey(0), int(config.data.max_length))
    out = []
    for label, params in (("trained", trained), ("fresh", fresh)):
        per_block = attention_stats.attention_statistics(
            model_config,
            params,
            *batch,
            special_ids=tuple(token_ids.values()),
            separator_id=token_ids["[SEP]"],
            window=_WINDOW.value,
        )
        out.append(
            {
                "workdir": relative(workdir),
                "parameters": label,
                "objective": config.get("objective", "mlm"),
                "every_exit": bool(config.mlm.every_exit),
                "steps": int(config.num_train_steps),
                "rows": int(batch[0].shape[0]),
                "per_block": per_block,
                "mean": attention_stats.summarize(per_block),
            }
        )
    return out


def main(argv: list[str]) -> None:
    """Probes every workdir and writes the record."""
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs names no pretraining workdir.")
    bodies = [entry for workdir in _WORKDIRS.value for entry in probe(workdir)]
    for entry in bodies:
        mean = entry["mean"]
        print(
            f"{entry['workdir']} ({entry['parameters']}): entropy {mean['entropy']:.3f} nats "
            f"(uniform {mean['uniform_entropy']:.3f}), near share {mean['near_share']:.3f} "
            f"(uniform {mean['uniform_near_share']:.3f}), self {mean['self_share']:.3f} "
            f"(uniform {mean['uniform_self_share']:.3f}), own text "
            f"{mean['same_text_share']:.3f} (uniform {mean['uniform_same_text_share']:.3f}), "
            f"special tokens {mean['special_share']:.3f} "
            f"(uniform {mean['uniform_special_share']:.3f})"
        )
    record = {
        "command": command_line(sys.argv),
        "machine": machine.describe(),
        "window": _WINDOW.value,
        "bodies": bodies,
    }
    Path(_OUT.value).write_text(json.dumps(record, indent=2) + "\n")
    print(f"Wrote {relative(_OUT.value)}")


if __name__ == "__main__":
    app.run(main)
