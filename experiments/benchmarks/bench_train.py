"""Training-step throughput: binarized model vs its full-precision counterpart, and MFU.

Run (a few minutes on a 2-core CPU, most of it compiling):

  python experiments/benchmarks/bench_train.py

What is measured, in one process, on the default device:
  step:    the jitted, state-donating update of `beex_jax.train` (forward through every exit,
           soft-routing loss, backward, AdamW with latent clipping) of the default `size=small`
           SST-2 model (vocabulary 16,000), batch 32. Inputs are random token ids at length 32
           (the SST-2 length bucket that holds 95% of its examples after 16) with random real
           lengths 8..32; the cost of a step does not depend on the token values. The binarized
           model (`model.binarize=True`) and the float counterpart (`False`, same tree) are
           timed in alternating rounds so that load on a shared machine hits both alike; a
           variant's figure is its best round (least disturbed), and the cost ratio is the
           median over rounds of binarized / float in the same round.
           The target: the binarized step costs at most 1.3x the float step.
  MFU:     model FLOPs of a step (3x the forward FLOPs of `beex_jax.flops` at the padded length:
           forward + backward) per second, over the FLOP/s of a float32 matmul measured on the
           same device in the same run. XLA's own count for the compiled step is reported too.
Results go to experiments/results/bench_train.json with the command line that produced them.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import flops, loop, optim, train
from beex_jax.data import tokenizer
from beex_jax.model import BEExformer, ModelConfig, init_params
from configs import glue
from experiments.machine import describe
from experiments.paths import command_line

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_train.json"


def random_batch(rng: np.random.Generator, batch: int, length: int, vocab: int) -> dict:
    """Random token ids with random real lengths (8..length) and labels."""
    lengths = rng.integers(8, length + 1, size=batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, vocab, size=(batch, length)) * mask).astype(np.int32),
        "segment_ids": np.zeros((batch, length), np.int32),
        "mask": mask,
        "label": rng.integers(0, 2, size=batch).astype(np.int32),
        "weight": np.ones(batch, np.float32),
    }


class Step:
    """A compiled training step of one model variant and its state."""

    def __init__(self, binarize: bool, args: argparse.Namespace, batch: dict):
        config = glue.get_config("task=sst2").copy_and_resolve_references()
        config.model.vocab_size = args.vocab_size
        config.model.binarize = binarize
        config.batch_size = args.batch_size
        self.model_config = ModelConfig.from_config(config.model)
        tx, schedule = optim.create_optimizer(config, num_train_steps=10_000)
        params = init_params(self.model_config, jax.random.PRNGKey(0))
        self.state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.PRNGKey(1))
        update = jax.jit(
            train.make_update_fn(
                BEExformer(self.model_config), tx, schedule, config, tokenizer.SPECIAL_IDS
            ),
            donate_argnums=(0,),
        )
        start = time.perf_counter()
        self.compiled = update.lower(self.state, batch).compile()
        self.compile_s = time.perf_counter() - start
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.xla_flops = float(cost.get("flops", float("nan")))
        self.batch = jax.device_put(batch)
        self.round_times: list[float] = []
        self.run(2)  # Warm-up.

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` back-to-back steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / steps

    def model_flops(self, batch: int, length: int) -> float:
        """Forward + backward FLOPs of one step at the padded length (3x the forward)."""
        lengths = jnp.full((batch,), length, jnp.int32)
        return 3.0 * float(jnp.sum(flops.full_depth_flops(self.model_config, lengths)))


def matmul_flops_per_s(n: int, repeats: int) -> float:
    """FLOP/s of an n x n float32 matmul on the default device (best of `repeats`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / min(times)


def main() -> None:
    """Times both variants and the matmul, prints and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--vocab_size", type=int, default=16000)
    parser.add_argument("--steps", type=int, default=10, help="Steps per timed round.")
    parser.add_argument("--rounds", type=int, default=12, help="Alternating rounds per variant.")
    parser.add_argument("--matmul_size", type=int, default=1024)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    batch = random_batch(np.random.default_rng(0), args.batch_size, args.length, args.vocab_size)
    steps = {"binarized": Step(True, args, batch), "float": Step(False, args, batch)}
    peak_before = matmul_flops_per_s(args.matmul_size, repeats=10)
    for _ in range(args.rounds):
        for step in steps.values():
            step.round_times.append(step.run(args.steps))
    peak = max(peak_before, matmul_flops_per_s(args.matmul_size, repeats=10))

    results = {}
    for name, step in steps.items():
        seconds = min(step.round_times)
        model_flops = step.model_flops(args.batch_size, args.length)
        results[name] = {
            "step_ms_best_round": round(1000 * seconds, 2),
            "step_ms_median_round": round(1000 * statistics.median(step.round_times), 2),
            "step_ms_rounds": [round(1000 * t, 2) for t in step.round_times],
            "examples_per_s": round(args.batch_size / seconds, 1),
            "compile_s": round(step.compile_s, 1),
            "model_flops_per_step": model_flops,
            "xla_flops_per_step": step.xla_flops,
            "model_flops_per_s": model_flops / seconds,
            "mfu": round(model_flops / seconds / peak, 4),
        }
        print(
            f"{name:9s}: {results[name]['examples_per_s']:7.1f} examples/s "
            f"({1000 * seconds:.1f} ms/step best round; rounds {results[name]['step_ms_rounds']}), "
            f"MFU {100 * results[name]['mfu']:.1f}%"
        )
    ratio = statistics.median(
        b / f
        for b, f in zip(steps["binarized"].round_times, steps["float"].round_times, strict=True)
    )
    print(f"matmul {args.matmul_size}^3 float32: {peak / 1e9:.1f} GFLOP/s")
    print(
        f"binarized / float step (median of same-round ratios): {ratio:.2f}x "
        f"({'PASS' if ratio <= 1.3 else 'FAIL'}: <= 1.3x)"
    )
    record = {
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "inputs": f"random token ids, batch {args.batch_size}, length {args.length} "
        f"(real lengths 8..{args.length}), vocabulary {args.vocab_size}, size=small (SST-2)",
        "matmul_flops_per_s": peak,
        **results,
        "binarized_over_float_step_median_round_ratio": round(ratio, 3),
        "target_at_most_1_3x": ratio <= 1.3,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
