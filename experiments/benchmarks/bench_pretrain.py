"""Pretraining throughput: binarized MLM step vs full precision, and the input pipeline's rate.

Run (about three minutes on a 2-core CPU, most of it compiling and building the corpus):

  python experiments/benchmarks/bench_pretrain.py --glue_dir=../shared/data/glue

What is measured, in one process, on the default device:
  step:   the jitted update of `beex_jax.pretrain` (BERT masking, MaskedLM forward with the tied
          binarized output table, loss, backward, AdamW with latent clipping) of the default
          `configs/pretrain.py` model (size=small, pre-LN as the shared pretrained body) on one
          real packed batch (64 rows of 128 tokens). Binarized and float variants are timed in
          alternating rounds; a variant's figure is its best round, the ratio the median of
          same-round ratios.
  input:  batches per second that `CorpusInput.train_iterator` (grain) delivers with no model
          step, on the same corpus: how much faster than the step the pipeline runs.
Results go to experiments/results/bench_pretrain.json with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import loop, mlm, optim, pretrain
from beex_jax.data import corpus
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import ModelConfig
from configs import pretrain as pretrain_config
from experiments.benchmarks import bench_train
from experiments.machine import describe
from experiments.paths import command_line, relative

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_pretrain.json"


class Step(bench_train.Step):
    """A compiled MLM update of one variant and its state (timed as bench_train's step)."""

    def __init__(self, binarize: bool, config, token_ids: dict, batch: dict):
        config = config.copy_and_resolve_references()
        config.model.binarize = binarize
        model_config = ModelConfig.from_config(config.model)
        model = mlm.MaskedLM(model_config, every_exit=config.mlm.every_exit)
        tx, schedule = optim.create_optimizer(config, num_train_steps=10_000)
        params = mlm.init_params(model_config, jax.random.PRNGKey(0), config.data.max_length)
        self.state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.PRNGKey(1))
        loss_fn = pretrain.make_loss_fn(model, config, token_ids)
        update = jax.jit(loop.make_update(loss_fn, tx, schedule), donate_argnums=(0,))
        self.batch = jax.device_put(batch)
        start = time.perf_counter()
        self.compiled = update.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.round_times: list[float] = []
        self.run(2)  # Warm-up.


def main() -> None:
    """Builds the corpus, times both variants and the pipeline, prints and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue_dir", default="../shared/data/glue")
    parser.add_argument("--tfds_dir", default="runs/tfds")
    parser.add_argument("--vocab_file", default="runs/pretrain/vocab.txt", help="Else learned.")
    parser.add_argument("--steps", type=int, default=3, help="Steps per timed round.")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds per variant.")
    parser.add_argument("--input_batches", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    config = pretrain_config.get_config()
    config.unlock()
    config.data.glue_dir = args.glue_dir
    config.data.tfds_dir = args.tfds_dir
    config.model.norm = "pre"
    units = corpus.collect_units(config)
    if os.path.exists(args.vocab_file):
        vocab = args.vocab_file
    else:
        vocab = os.path.join(args.tfds_dir, "bench_pretrain_vocab.txt")
        tokens = tokenizer_lib.learn_vocab(corpus.unit_texts(units), config.data.vocab_size, 0)
        Path(vocab).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    tokenizer = tokenizer_lib.tokenizer_from_vocab(vocab)
    input_ = corpus.create_input(config, tokenizer, units, process_index=0, process_count=1)
    config.model.vocab_size = input_.vocab_size
    token_ids = input_.special_token_ids()

    iterator = input_.train_iterator(config.seed)
    batch = next(iterator)
    start = time.perf_counter()
    for _ in range(args.input_batches):
        next(iterator)
    input_batches_per_s = args.input_batches / (time.perf_counter() - start)

    steps = {"binarized": Step(True, config, token_ids, batch)}
    steps["float"] = Step(False, config, token_ids, batch)
    for _ in range(args.rounds):
        for step in steps.values():
            step.round_times.append(step.run(args.steps))

    tokens_per_step = config.batch_size * config.data.max_length
    results = {}
    for name, step in steps.items():
        seconds = min(step.round_times)
        results[name] = {
            "step_ms_best_round": round(1000 * seconds, 1),
            "step_ms_rounds": [round(1000 * t, 1) for t in step.round_times],
            "tokens_per_s": round(tokens_per_step / seconds),
            "compile_s": round(step.compile_s, 1),
            "input_over_step_rate": round(input_batches_per_s * seconds, 1),
        }
        print(
            f"{name:9s}: {results[name]['tokens_per_s']:7d} tokens/s "
            f"({1000 * seconds:.0f} ms/step best round; rounds {results[name]['step_ms_rounds']}); "
            f"the pipeline runs {results[name]['input_over_step_rate']}x the step's rate"
        )
    ratio = statistics.median(
        b / f
        for b, f in zip(steps["binarized"].round_times, steps["float"].round_times, strict=True)
    )
    print(
        f"input pipeline: {input_batches_per_s:.1f} batches/s; binarized / float step {ratio:.2f}x"
    )
    record = {
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "inputs": f"real packed corpus batch ({config.batch_size} x {config.data.max_length}), "
        f"vocabulary {input_.vocab_size} ({relative(vocab)}), size=small, pre-LN",
        "input_batches_per_s": round(input_batches_per_s, 1),
        **results,
        "binarized_over_float_step_median_round_ratio": round(ratio, 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {relative(args.out)}")


if __name__ == "__main__":
    main()
