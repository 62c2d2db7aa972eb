"""Training and inference as a fraction of this machine's dot rate at the model's shapes (issue 24).

Run (about ten minutes on a 2-core CPU, most of it compiling; an idle machine, as every timing):

  python experiments/benchmarks/bench_roofline.py

What is measured, in one process, on the default device:
  GEMM:      FLOP/s of the model's dense dots, [rows, k] x [k, n] for every (k, n) of a dense
             layer (d -> d, d -> slfn_dim, slfn_dim -> d; the MLM output d -> vocab), at the rows
             of each workload, as float32 x float32 and as bfloat16 x bfloat16 accumulated in
             float32 (`preferred_element_type`); median of --gemm_repeats timings of 10
             back-to-back calls (a call's dispatch overlaps the one before, as in the workloads).
  roofline:  per workload and dot dtype, the model FLOPs (`beex_jax.flops`) over the time they
             would take with every part at the GEMM rate of its shape (attention scores and
             mixing and the exit heads, small, at the rate of the d -> d shape).
  workloads: the GLUE training step (`beex_jax.train`, random tokens, batch 32 x 32, size=small,
             as bench_train.py), the MLM pretraining step (`beex_jax.pretrain`,
             configs/pretrain.py, random tokens, 64 rows x 128, pre-LN), and full-depth inference
             (`early_exit.full_depth_logits` on weights binarized once, batch 256 x 32), each in
             every --dtypes mode (`model.dtype`: float32, bf16_f32, ...), the training steps also
             in every --remats mode (`model.remat`: none saves each block's activations for the
             backward pass, block recomputes them). Training model FLOPs are 3x the forward's
             (forward + backward; recomputation is not counted), at the padded length (every
             token is real here).
             Modes are timed in alternating rounds; a figure is its best round.
  fraction:  achieved model FLOP/s over the float32 roofline and over the bf16 one (every dot at
             the bf16 -> float32 rate: the issue's target).
`--quick` (size=tiny, small shapes, few repeats) is a smoke test, not a record. JSON goes to
experiments/results/bench_roofline.json with the command, the machine, whether its CPU has bf16
dot instructions (what `model.dtype="auto"` reads) and the load average (the CPUs may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import corruption, early_exit, flops, loop, mlm, optim, precision, pretrain, train
from beex_jax.data import tokenizer
from beex_jax.model import BEExformer, ModelConfig, inference_params, init_params
from configs import glue
from configs import pretrain as pretrain_config
from experiments.machine import describe
from experiments.paths import command_line, relative

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_roofline.json"
GEMM_DTYPES = {"float32": jnp.float32, "bf16_f32": jnp.bfloat16}
QUICK = {  # --quick: a smoke test of the script, not a record.
    "size": "tiny",
    "vocab_size": 1000,
    "glue_batch": 8,
    "glue_length": 16,
    "mlm_rows": 8,
    "mlm_length": 32,
    "infer_batch": 32,
    "infer_length": 16,
    "calls": 2,
    "rounds": 2,
    "gemm_repeats": 5,
}
INPUT_ARGS = ("size", "vocab_size", "glue_batch", "glue_length", "mlm_rows", "mlm_length")
INPUT_ARGS += ("infer_batch", "infer_length", "calls", "rounds", "gemm_repeats")


# ----------------------------------------------------------------------------- GEMM rates
def gemm_rate(rows: int, k: int, n: int, operands, repeats: int, calls: int = 10) -> float:
    """FLOP/s of [rows, k] x [k, n] on `operands` accumulated in float32: the median over
    `repeats` of `calls` back-to-back calls waited on once (as the workloads are timed)."""
    a = jax.random.normal(jax.random.key(0), (rows, k)).astype(operands)
    b = jax.random.normal(jax.random.key(1), (k, n)).astype(operands)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([dot(a, b) for _ in range(calls)])
        seconds.append((time.perf_counter() - start) / calls)
    return 2.0 * rows * k * n / statistics.median(seconds)


def dense_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(k, n) of each kind of dense dot of the model."""
    d, wide = cfg.hidden_dim, cfg.slfn_dim if cfg.slfn else 4 * cfg.hidden_dim
    return {"d_d": (d, d), "d_up": (d, wide), "d_down": (wide, d), "d_vocab": (d, cfg.vocab_size)}


def stage_parts(cfg: ModelConfig, length: int, exit_heads: bool) -> list[tuple[float, str]]:
    """(FLOPs per example, shape name) of one stage at `length` tokens (`flops.stage_terms`)."""
    parts = []
    for name, term in flops.stage_terms(cfg).items():
        if name.startswith("exit_") and not exit_heads:
            continue
        value = float((term.quadratic * length + term.linear) * length + term.constant)
        if name in ("slfn", "ffn"):  # Half up (d -> wide), half down (wide -> d).
            parts += [(value / 2, "d_up"), (value / 2, "d_down")]
        else:
            parts.append((value, "d_d"))
    return parts


def roofline(parts: list[tuple[float, str]], rates: dict[str, float]) -> float:
    """FLOP/s of the parts if each ran at the GEMM rate of its shape."""
    return sum(f for f, _ in parts) / sum(f / rates[shape] for f, shape in parts)


# ----------------------------------------------------------------------------- workloads
class Workload:
    """A compiled function of one model dtype and its inputs, timed call by call."""

    def __init__(self, fn, state, inputs, donate: bool):
        self.fn, self.state, self.inputs, self.donate = fn, state, inputs, donate
        self.round_times: list[float] = []
        self.run(2)  # Compiles (the first call) and warms up.

    def run(self, calls: int) -> float:
        """Seconds per call over `calls` back-to-back calls."""
        start = time.perf_counter()
        for _ in range(calls):
            out = self.fn(self.state, *self.inputs)
            if self.donate:
                self.state, out = out
        jax.block_until_ready((self.state, out))
        return (time.perf_counter() - start) / calls


def glue_training(args, dtype: str, remat: str) -> tuple[Workload, ModelConfig, Any]:
    """The GLUE training step of one mode, compiled: (workload, model config, optimizer)."""
    config = glue.get_config(f"task=sst2,size={args.size}").copy_and_resolve_references()
    config.model.vocab_size = args.vocab_size
    config.model.dtype = dtype
    config.model.remat = remat
    config.batch_size = args.glue_batch
    model_config = ModelConfig.from_config(config.model)
    tx, schedule = optim.create_optimizer(config, num_train_steps=10_000)
    params = init_params(model_config, jax.random.key(0))
    state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.key(1))
    update = train.make_update_fn(
        BEExformer(model_config), tx, schedule, config, tokenizer.SPECIAL_IDS
    )
    rng = np.random.default_rng(0)
    ids = random_ids(args.glue_batch, args.glue_length, args.vocab_size)
    batch = {
        **ids,
        "label": rng.integers(0, 2, args.glue_batch).astype(np.int32),
        "weight": np.ones(args.glue_batch, np.float32),
    }
    work = Workload(jax.jit(update, donate_argnums=(0,)), state, (jax.device_put(batch),), True)
    return work, model_config, tx


def random_ids(batch: int, length: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random token ids, every token real (the model FLOPs are then the FLOPs computed)."""
    ids = np.random.default_rng(1).integers(5, vocab_size, (batch, length)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": np.ones_like(ids)}


def mlm_training(args, dtype: str, remat: str) -> tuple[Workload, ModelConfig, int]:
    config = pretrain_config.get_config(f"size={args.size}").unlock()
    config.model.norm = "pre"
    config.model.dtype = dtype
    config.model.remat = remat
    config.data.vocab_size = args.vocab_size
    config.data.max_length = args.mlm_length
    config.batch_size = args.mlm_rows
    config = config.copy_and_resolve_references()
    model_config = ModelConfig.from_config(config.model)
    tx, schedule = optim.create_optimizer(config, num_train_steps=10_000)
    params = mlm.init_params(model_config, jax.random.key(0), args.mlm_length)
    state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.key(1))
    loss_fn = pretrain.make_loss_fn(mlm.MaskedLM(model_config), config, tokenizer.SPECIAL_IDS)
    update = jax.jit(loop.make_update(loss_fn, tx, schedule), donate_argnums=(0,))
    batch = random_ids(args.mlm_rows, args.mlm_length, args.vocab_size)
    predictions = corruption.num_predictions(args.mlm_length, config.mlm.mask_rate)
    return Workload(update, state, (jax.device_put(batch),), True), model_config, predictions


def inference(args, dtype: str) -> tuple[Workload, ModelConfig]:
    config = glue.get_config(f"task=sst2,size={args.size}").copy_and_resolve_references()
    config.model.vocab_size = args.vocab_size
    config.model.dtype = dtype
    latent_config = ModelConfig.from_config(config.model)
    params, model_config = inference_params(
        init_params(latent_config, jax.random.key(0)), latent_config
    )
    ids = random_ids(args.infer_batch, args.infer_length, args.vocab_size)
    inputs = jax.device_put(tuple(ids[k] for k in ("input_ids", "segment_ids", "mask")))

    def logits(params, *batch):
        return early_exit.full_depth_logits(params, *batch, model_config=model_config)

    return Workload(logits, params, inputs, False), model_config


# ----------------------------------------------------------------------------- main
def main() -> None:
    """GEMM rates, then every workload in every mode; prints and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bf16_f32", help="model.dtype modes timed.")
    parser.add_argument("--remats", default="none,block", help="model.remat modes (training).")
    parser.add_argument("--size", default="small")
    parser.add_argument("--vocab_size", type=int, default=16000)
    parser.add_argument("--glue_batch", type=int, default=32)
    parser.add_argument("--glue_length", type=int, default=32)
    parser.add_argument("--mlm_rows", type=int, default=64)
    parser.add_argument("--mlm_length", type=int, default=128)
    parser.add_argument("--infer_batch", type=int, default=256)
    parser.add_argument("--infer_length", type=int, default=32)
    parser.add_argument("--calls", type=int, default=5, help="Calls per timed round.")
    parser.add_argument("--rounds", type=int, default=6, help="Alternating rounds per mode.")
    parser.add_argument("--gemm_repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="Smoke test: tiny, few repeats.")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    load_start = os.getloadavg()
    dtypes = args.dtypes.split(",")

    # ------------------------------------------------------------------ workloads (compile)
    workloads, parts, configs = {}, {}, {}
    for dtype in dtypes:
        for remat in args.remats.split(","):
            work, cfg, _ = glue_training(args, dtype, remat)
            workloads[f"glue_train/{dtype}/remat={remat}"] = work
            configs["glue_train"] = cfg
            work, cfg, predictions = mlm_training(args, dtype, remat)
            workloads[f"mlm_train/{dtype}/remat={remat}"] = work
            configs["mlm_train"] = cfg
        work, cfg = inference(args, dtype)
        workloads[f"inference/{dtype}"] = work
        configs["inference"] = cfg
    cfg = configs["glue_train"]
    glue_rows = args.glue_batch * args.glue_length
    parts["glue_train"] = [
        (3 * args.glue_batch * cfg.num_layers * f, (glue_rows, s))
        for f, s in stage_parts(cfg, args.glue_length, exit_heads=True)
    ]
    cfg = configs["mlm_train"]
    mlm_rows, head_rows = args.mlm_rows * args.mlm_length, args.mlm_rows * predictions
    parts["mlm_train"] = [
        (3 * args.mlm_rows * cfg.num_layers * f, (mlm_rows, s))
        for f, s in stage_parts(cfg, args.mlm_length, exit_heads=False)
    ] + [
        (3 * 2.0 * head_rows * cfg.hidden_dim**2, (head_rows, "d_d")),
        (3 * 2.0 * head_rows * cfg.hidden_dim * cfg.vocab_size, (head_rows, "d_vocab")),
    ]
    cfg = configs["inference"]
    chunk = early_exit.chunk_rows(args.infer_batch, args.infer_length) * args.infer_length
    parts["inference"] = [
        (args.infer_batch * cfg.num_layers * f, (chunk, s))
        for f, s in stage_parts(cfg, args.infer_length, exit_heads=True)
    ]

    # ------------------------------------------------------------------ GEMM rates
    gemm = {}  # "rows:shape" -> {dtype: FLOP/s}
    for name, work_parts in parts.items():
        shapes = dense_shapes(configs[name])
        for _, (rows, shape) in work_parts:
            key = f"{rows}:{shape}"
            if key not in gemm:
                k, n = shapes[shape]
                gemm[key] = {
                    mode: gemm_rate(rows, k, n, operands, args.gemm_repeats)
                    for mode, operands in GEMM_DTYPES.items()
                }
                print(
                    f"GEMM [{rows}, {k}] x [{k}, {n}]: "
                    + ", ".join(f"{m} {r / 1e9:.1f} GFLOP/s" for m, r in gemm[key].items()),
                    flush=True,
                )

    # ------------------------------------------------------------------ timed rounds
    for _ in range(args.rounds):
        for work in workloads.values():
            work.round_times.append(work.run(args.calls))

    results = {}
    # Per call: examples (rows) and tokens.
    sizes = {
        "glue_train": (args.glue_batch, args.glue_length),
        "mlm_train": (args.mlm_rows, args.mlm_length),
        "inference": (args.infer_batch, args.infer_length),
    }
    for key, work in workloads.items():
        name = key.split("/")[0]
        model_flops = sum(f for f, _ in parts[name])
        seconds = min(work.round_times)
        keyed = [(f, f"{rows}:{shape}") for f, (rows, shape) in parts[name]]
        lines = {
            mode: roofline(keyed, {k: rates[mode] for k, rates in gemm.items()})
            for mode in GEMM_DTYPES
        }
        examples, length = sizes[name]
        row = {
            "ms_best_round": round(1000 * seconds, 2),
            "ms_median_round": round(1000 * statistics.median(work.round_times), 2),
            "ms_rounds": [round(1000 * t, 2) for t in work.round_times],
            "model_flops_per_call": model_flops,
            "model_flops_per_s": model_flops / seconds,
            "roofline_flops_per_s": lines,
            "fraction_of_roofline": {m: model_flops / seconds / r for m, r in lines.items()},
        }
        row["examples_per_s"] = examples / seconds
        row["tokens_per_s"] = examples * length / seconds
        results[key] = row
        rate = "examples" if name == "inference" else "tokens"
        print(
            f"{key:32s}: {row[rate + '_per_s']:9.0f} {rate}/s, "
            f"{row['model_flops_per_s'] / 1e9:6.1f} GFLOP/s = "
            f"{100 * row['fraction_of_roofline']['float32']:.0f}% of the float32 roofline, "
            f"{100 * row['fraction_of_roofline']['bf16_f32']:.0f}% of the bf16 one",
            flush=True,
        )
    # Side by side in this run: every mode against float32 as it was (activations saved).
    baselines = {"glue_train": "float32/remat=none", "mlm_train": "float32/remat=none"}
    baselines["inference"] = "float32"
    for key, row in results.items():
        name = key.split("/")[0]
        base = results.get(f"{name}/{baselines[name]}")
        if base is not None:
            row["speedup_over_float32_baseline"] = base["ms_best_round"] / row["ms_best_round"]

    def best(name: str) -> dict:
        rows = [row for key, row in results.items() if key.startswith(name + "/")]
        return max(rows, key=lambda row: row["model_flops_per_s"])

    targets = {
        "training_at_least_1.8x_float32_baseline": all(
            best(n).get("speedup_over_float32_baseline", 0) >= 1.8
            for n in ("glue_train", "mlm_train")
        ),
        "training_at_least_25pct_of_bf16_roofline": all(
            best(n)["fraction_of_roofline"]["bf16_f32"] >= 0.25 for n in ("glue_train", "mlm_train")
        ),
        "inference_at_least_70pct_of_bf16_roofline": best("inference")["fraction_of_roofline"][
            "bf16_f32"
        ]
        >= 0.7,
    }
    print(f"targets: {targets}", flush=True)
    record = {
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            "cpu_has_bf16_dot": precision.cpu_has_bf16_dot(),
            "auto_resolves_to": precision.resolve_here("auto"),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "quick_smoke_test": args.quick,
        "inputs": {k: getattr(args, k) for k in INPUT_ARGS},
        "modes": {d: precision.resolve_here(d) for d in dtypes},
        "gemm_flops_per_s": gemm,
        "results": results,
        "baselines": baselines,
        "targets_met": targets,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {relative(args.out)}")


if __name__ == "__main__":
    main()
