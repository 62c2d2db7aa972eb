"""Where a CPU training step's time goes, per model.dtype and model.remat; bf16 GEMMs by rows.

Run (a few minutes on a 2-core CPU; an idle machine, as every timing):

  python experiments/probes/step_breakdown.py

Part 1, the GLUE training step of experiments/benchmarks/bench_roofline.py (size=small, batch
32 x 32, random tokens) in each of float32 / bf16_f32 x remat none / block, timed in alternating
rounds (best round of --rounds, --calls calls each):
  forward   the model's logits, deterministic (no dropout)
  grad      value and gradient of a loss on those logits w.r.t. the parameters, deterministic
  step      the training update (`beex_jax.train.make_update_fn`: word and layer dropout, the
            exit loss, its gradient, Adam, the metrics)
  optimizer the optimizer's update alone, on a gradient of the right shapes
grad over forward is what recomputation acts on: with activations saved, the backward pass reads
and writes every block's residuals.
Part 2, bf16 x bf16 -> float32 against float32 GEMMs at the model's dense (k, n) shapes for row
counts 16 ... 1024 (`bench_roofline.gemm_rate`): whether bf16 dots lose to float32 on small chunks.
JSON goes to experiments/results/step_breakdown.json with the command, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax.model import BEExformer, ModelConfig
from experiments.benchmarks import bench_roofline
from experiments.machine import describe
from experiments.paths import command_line, relative

RESULTS = Path(__file__).resolve().parents[1] / "results" / "step_breakdown.json"
MODES = [(d, r) for d in ("float32", "bf16_f32") for r in ("none", "block")]
ROWS = (16, 32, 64, 128, 256, 512, 1024)


def ms_per_call(fn, *args, calls: int) -> float:
    """Milliseconds per call of `calls` back-to-back calls of fn(*args), waited on once."""
    start = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(calls)])
    return 1000 * (time.perf_counter() - start) / calls


def step_parts(args, dtype: str, remat: str) -> tuple[dict, ModelConfig]:
    """The four jitted parts of one mode's training step, with their inputs; the model config."""
    work, cfg, tx = bench_roofline.glue_training(args, dtype, remat)
    model = BEExformer(cfg)
    (batch,) = work.inputs
    keys = ("input_ids", "segment_ids", "mask")

    def forward(params):
        return model.apply({"params": params}, *(batch[k] for k in keys))

    def loss(params):
        return jnp.mean(forward(params) ** 2)

    # Copies: the training step donates (and so deletes) the state it is given.
    params, opt_state = jax.tree.map(jnp.copy, (work.state.params, work.state.opt_state))
    grad = jax.jit(jax.value_and_grad(loss))
    tx_update = jax.jit(tx.update)
    _, grads = grad(params)
    parts = {
        "forward": (jax.jit(forward), (params,)),
        "grad": (grad, (params,)),
        "step": work,
        "optimizer": (tx_update, (grads, opt_state, params)),
    }
    return parts, cfg


def main() -> None:
    """Times every part in every mode, then the GEMMs; prints and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gemm_repeats", type=int, default=30)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    shapes_args = argparse.Namespace(size="small", vocab_size=16000, glue_batch=32, glue_length=32)
    load_start = os.getloadavg()

    parts = {}
    for dtype, remat in MODES:
        parts[f"{dtype}/remat={remat}"], model_config = step_parts(shapes_args, dtype, remat)
    times: dict[str, dict[str, list[float]]] = {m: {} for m in parts}
    for part in parts.values():  # Compiles and warms up every part first.
        for name, entry in part.items():
            if name != "step":
                ms_per_call(entry[0], *entry[1], calls=1)
    for _ in range(args.rounds):
        for mode, part in parts.items():
            for name, entry in part.items():
                if name == "step":
                    ms = 1000 * entry.run(args.calls)
                else:
                    ms = ms_per_call(entry[0], *entry[1], calls=args.calls)
                times[mode].setdefault(name, []).append(ms)
    breakdown = {}
    for mode, parts_ms in times.items():
        row = {f"{name}_ms": min(ms) for name, ms in parts_ms.items()}
        row["grad_over_forward"] = row["grad_ms"] / row["forward_ms"]
        breakdown[mode] = row
        print(
            f"{mode:24s}: forward {row['forward_ms']:6.1f} ms, grad {row['grad_ms']:6.1f} "
            f"({row['grad_over_forward']:.1f}x), step {row['step_ms']:6.1f}, optimizer "
            f"{row['optimizer_ms']:5.1f}",
            flush=True,
        )

    gemms = {}
    for shape, (k, n) in bench_roofline.dense_shapes(model_config).items():
        if shape == "d_vocab":
            continue
        for rows in ROWS:
            rates = {
                mode: bench_roofline.gemm_rate(rows, k, n, operands, args.gemm_repeats)
                for mode, operands in bench_roofline.GEMM_DTYPES.items()
            }
            rates["bf16_over_float32"] = rates["bf16_f32"] / rates["float32"]
            gemms[f"{rows}x{k}x{n}"] = rates
            print(
                f"GEMM [{rows:4d}, {k}] x [{k}, {n}]: float32 {rates['float32'] / 1e9:6.1f}, "
                f"bf16 -> f32 {rates['bf16_f32'] / 1e9:6.1f} GFLOP/s "
                f"({rates['bf16_over_float32']:.2f}x)",
                flush=True,
            )
    record = {
        "probe": "CPU training step by part and mode; bf16 against float32 GEMMs by rows",
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "inputs": {**vars(shapes_args), "calls": args.calls, "rounds": args.rounds},
        "step_ms": breakdown,
        "gemm_flops_per_s": gemms,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {relative(args.out)}")


if __name__ == "__main__":
    main()
