"""beex-jax vs the same BEExformer in PyTorch, side by side in one run, on the same weights.

Run (PyTorch in a venv of its own, CPU build; it is not in requirements.txt):

  python3 -m venv ../torchvenv && ../torchvenv/bin/pip install torch==2.13.0 numpy
  python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2-short \
      --config.data.glue_dir=../shared/data/glue --config.data.tfds_dir=runs/tfds \
      --config.num_train_steps=400 --config.eval_every_steps=400
  python -m beex_jax.main --mode=export --workdir runs/sst2-short
  python experiments/benchmarks/bench_peers.py --workdir runs/sst2-short \
      --export runs/sst2-short/export \
      --torch_python ../torchvenv/bin/python

The PyTorch model (experiments/benchmarks/peers/beexformer_torch.py) reads the export with NumPy
and runs in a worker process of the torch venv (experiments/benchmarks/peers/torch_worker.py);
this process runs JAX.
Both compute the full-depth forward pass returning every exit's logits [L, B, C], on the same
float32 alpha * sign(W) weights and the same int32 inputs (written to a .npz the worker reads).
Before timing, the logits of every batch are compared (`outputs_match`).

Cases: random token ids at batch x length 1x32, 32x32, 256x32, 256x64 (real lengths uniform in
[length/2, length]; a pass calls the batch enough times for 64 examples at least), and the real
SST-2 dev set tokenized by the model's vocabulary, sorted by length and padded to the bucket
lengths in batches of 256 (as `Predictor` batches it; both sides compute the padding rows).
Variants:
  jax_export_float32   full_depth_logits on the export's weights (chunked as inference chooses),
                       model.dtype=float32
  jax_export_bf16_f32  the same with model.dtype=bf16_f32 (bf16 dot operands, float32
                       accumulation; emulated, so slow, on a CPU without bf16 dot instructions)
  jax_export           not timed again: the one of the two that the export's model.dtype
                       ("auto": bf16_f32 on a CPU with bf16 dots, else float32) resolves to here
  jax_workdir          the export's mode on the training workdir's latent weights, binarized once
  jax_early_exit       early_exit_forward (SST-2 dev only; per-example exits at the config's delta)
  torch_eager          the PyTorch model, eager, under torch.inference_mode
  torch_compile        torch.compile of it (inductor), compiled in a warm-up pass
  torch_compile_bf16   torch.compile of it under torch.autocast("cpu", torch.bfloat16): the
                       peer's best numerics on CPU
"Best with best" (`*_best_over_torch_best`) divides the faster JAX full-depth mode by the faster
compiled PyTorch one. Logits are compared with PyTorch's float32 eager ones: within LOGITS_ATOL for
a float32 JAX mode, BF16_LOGITS_ATOL for bf16_f32; the PyTorch bf16 logits' difference is
recorded.
Timing: a warm-up pass (compiles every shape on both sides), then two rounds, alternating JAX and
PyTorch; in each round every (case, variant) is timed as the median of --repeats passes; the
better round is reported. JSON goes to experiments/results/bench_peers.json with the command, the
machine and its load average (its CPUs may be shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import early_exit, predict
from experiments.benchmarks.bench_inference import dev_set
from experiments.machine import describe
from experiments.paths import command_line

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results" / "bench_peers.json"
WORKER = REPO / "experiments" / "benchmarks" / "peers" / "torch_worker.py"
DEFAULT_GLUE = os.environ.get("BEEX_GLUE_DIR", str(REPO.parent / "shared" / "data" / "glue"))
SHAPES = ((1, 32), (32, 32), (256, 32), (256, 64))
KEYS = ("input_ids", "segment_ids", "mask")
LOGITS_ATOL = 1e-4  # float32 on both sides; only the order of summation differs.
# bf16_f32 on the JAX side: bfloat16 operands (8-bit mantissa) through every dense layer.
BF16_LOGITS_ATOL = 0.05


def random_case(batch: int, length: int, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids with real lengths uniform in [length / 2, length]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, length // 2), length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(5, vocab_size, (batch, length)) * mask).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": mask}


class TorchWorker:
    """The PyTorch side in the torch venv, driven by JSON lines (peers/torch_worker.py)."""

    def __init__(self, python: str, export: str, inputs: str):
        self.process = subprocess.Popen(
            [python, str(WORKER), "--export", export, "--inputs", inputs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self.read()

    def read(self) -> dict:
        """The worker's next JSON line."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"The torch worker exited (code {self.process.wait()}).")
        return json.loads(line)

    def __call__(self, **command) -> dict:
        """Sends a command, returns its reply."""
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        """Stops the worker."""
        self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.process.stdin.flush()
        self.process.wait(timeout=60)


def time_jax(fn, batches, repeats: int) -> float:
    """Median seconds of `repeats` passes of fn over the batches, each result waited on."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            jax.block_until_ready(fn(batch))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    """Runs the comparison, prints a table and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="The training workdir.")
    parser.add_argument("--export", required=True, help="Its export (--mode=export).")
    parser.add_argument("--torch_python", default=str(REPO.parent / "torchvenv" / "bin" / "python"))
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sst2_batch_size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS), type=Path)
    args = parser.parse_args()
    load_start = os.getloadavg()

    # ------------------------------------------------------------------ models and cases
    from_export = predict.load(args.export, mode="full_depth", batch_size=args.sst2_batch_size)
    from_workdir = predict.load(args.workdir, mode="full_depth")
    model_config, exit_config = from_export.model_config, from_export.exit_config
    # A random case is one batch, called enough times (64 examples at least) to be timed.
    cases = {
        f"{b}x{t}": [random_case(b, t, model_config.vocab_size, seed=b * t)] * max(1, 64 // b)
        for b, t in SHAPES
    }
    texts, labels = dev_set(args.glue_dir, from_export.task)
    encoded = from_export.encode(texts)
    dev_rows, sst2 = [], []  # Example indices of each padded batch, and the batch.
    for rows, batch in from_export.batches(encoded):
        dev_rows.append(rows)
        sst2.append(batch)
    cases["sst2_dev"] = sst2

    def full(params, config=model_config):
        def fn(batch):
            return early_exit.full_depth_logits(
                params, *(batch[k] for k in KEYS), model_config=config
            )

        return fn

    def early(batch):
        return early_exit.early_exit_forward(
            from_export.params, *(batch[k] for k in KEYS), exit_config, model_config=model_config
        )

    configs = {m: dataclasses.replace(model_config, dtype=m) for m in ("float32", "bf16_f32")}
    auto_mode = model_config.compute_dtype  # The export's own model.dtype, resolved here.
    jax_variants = {f"jax_export_{m}": full(from_export.params, c) for m, c in configs.items()}
    jax_variants["jax_workdir"] = full(from_workdir.params)
    modes = {f"jax_export_{m}": c.compute_dtype for m, c in configs.items()}
    modes["jax_workdir"] = auto_mode

    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        np.savez(
            inputs,
            **{
                f"{c}/{i}/{k}": b[k]
                for c, bs in cases.items()
                for i, b in enumerate(bs)
                for k in KEYS
            },
        )
        worker = TorchWorker(args.torch_python, args.export, inputs)
        # -------------------------------------------------------------- same outputs
        worker(cmd="logits", out=os.path.join(tmp, "torch_logits.npz"))
        torch_logits = dict(np.load(os.path.join(tmp, "torch_logits.npz")))
        worker(cmd="logits", out=os.path.join(tmp, "torch_bf16.npz"), variant="torch_compile_bf16")
        torch_bf16 = dict(np.load(os.path.join(tmp, "torch_bf16.npz")))
        differences, within = {}, {}
        for case, batches in cases.items():
            for name, fn in jax_variants.items():
                diff = max(
                    float(np.max(np.abs(np.asarray(fn(b)) - torch_logits[f"{case}/{i}"])))
                    for i, b in enumerate(batches)
                )
                differences[f"{case}/{name}"] = diff
                atol = LOGITS_ATOL if modes[name] == "float32" else BF16_LOGITS_ATOL
                within[f"{case}/{name}"] = diff <= atol
            differences[f"{case}/torch_compile_bf16"] = max(
                float(np.max(np.abs(torch_bf16[key] - torch_logits[key])))
                for key in torch_logits
                if key.startswith(case + "/")
            )
        print(f"max |jax - torch| logits: {differences}", flush=True)

        # -------------------------------------------------------------- warm-up, then rounds
        warmup_start = time.perf_counter()
        for case, batches in cases.items():
            for fn in (*jax_variants.values(), *([early] if case == "sst2_dev" else [])):
                time_jax(fn, batches, 1)
        jax_warmup = time.perf_counter() - warmup_start
        torch_warmup = worker(cmd="warmup")["seconds"]
        rounds = []
        for _ in range(2):
            timings = {}
            for case, batches in cases.items():
                for name, fn in jax_variants.items():
                    timings[f"{case}/{name}"] = time_jax(fn, batches, args.repeats)
                if case == "sst2_dev":
                    timings[f"{case}/jax_early_exit"] = time_jax(early, batches, args.repeats)
            timings.update(worker(cmd="time", repeats=args.repeats))
            rounds.append(timings)
        worker.close()

    # ------------------------------------------------------------------ accuracy on SST-2 dev
    def accuracy_of(predictions_of_batch) -> float:
        out = np.zeros(len(labels), np.int64)
        for i, (rows, batch) in enumerate(zip(dev_rows, sst2, strict=True)):
            out[rows] = np.asarray(predictions_of_batch(i, batch))[: len(rows)]
        return float(np.mean(out == labels))

    export_full = jax_variants[f"jax_export_{auto_mode}"]
    accuracy = {
        "jax_full_depth_last_exit": accuracy_of(lambda i, b: np.argmax(export_full(b)[-1], -1)),
        "jax_early_exit": accuracy_of(lambda i, b: early(b)[0]["prediction"]),
        "torch_last_exit": accuracy_of(
            lambda i, b: np.argmax(torch_logits[f"sst2_dev/{i}"][-1], -1)
        ),
    }

    # ------------------------------------------------------------------ report
    best = {key: min(r[key] for r in rounds) for key in rounds[0]}
    rows = []
    for case, batches in cases.items():
        examples = len(labels) if case == "sst2_dev" else sum(len(b["mask"]) for b in batches)
        row = {"case": case, "examples": examples}
        for key, seconds in best.items():
            if key.startswith(case + "/"):
                row[key.split("/", 1)[1] + "_examples_per_second"] = examples / seconds
        row["jax_export_examples_per_second"] = row[f"jax_export_{auto_mode}_examples_per_second"]
        compiled = row["torch_compile_examples_per_second"]
        row["jax_export_over_torch_compile"] = row["jax_export_examples_per_second"] / compiled
        torch_best = max(compiled, row["torch_compile_bf16_examples_per_second"])
        jax_best = max(
            row["jax_export_float32_examples_per_second"],
            row["jax_export_bf16_f32_examples_per_second"],
        )
        row["jax_best_over_torch_best"] = jax_best / torch_best
        row["jax_best_over_torch_compile"] = jax_best / compiled
        row["jax_workdir_over_export"] = (
            row["jax_workdir_examples_per_second"] / row["jax_export_examples_per_second"]
        )
        if case == "sst2_dev":
            row["jax_early_exit_over_torch_compile"] = (
                row["jax_early_exit_examples_per_second"] / compiled
            )
            row["jax_early_exit_over_torch_best"] = (
                row["jax_early_exit_examples_per_second"] / torch_best
            )
        row["max_abs_logit_difference_vs_torch"] = {
            k.split("/", 1)[1]: v for k, v in differences.items() if k.startswith(case + "/")
        }
        rows.append(row)
        print(
            f"{case:>9}: jax {row['jax_export_examples_per_second']:>8.0f} ex/s (workdir "
            f"{row['jax_workdir_examples_per_second']:.0f}), torch.compile {compiled:>8.0f}, "
            f"eager {row['torch_eager_examples_per_second']:>8.0f}: "
            f"{row['jax_export_over_torch_compile']:.2f}x compile ({auto_mode}); best with best "
            f"(jax float32 {row['jax_export_float32_examples_per_second']:.0f}, bf16 "
            f"{row['jax_export_bf16_f32_examples_per_second']:.0f}, torch "
            f"{row['torch_compile_bf16_examples_per_second']:.0f}): "
            f"{row['jax_best_over_torch_best']:.2f}x",
            flush=True,
        )
    by_case = {r["case"]: r for r in rows}
    dev = by_case["sst2_dev"]
    targets = {
        "full_depth_at_least_2x_torch_compile_float32_every_shape": all(
            by_case[f"{b}x{t}"]["jax_best_over_torch_compile"] >= 2 for b, t in SHAPES
        ),
        "early_exit_at_least_4x_torch_compile_on_sst2_dev": dev["jax_early_exit_over_torch_compile"]
        >= 4,
        "early_exit_accuracy_at_least_full_depth": accuracy["jax_early_exit"]
        >= accuracy["jax_full_depth_last_exit"],
        "workdir_as_fast_as_export_within_10pct": all(
            r["jax_workdir_over_export"] >= 0.9 for r in rows
        ),
        "outputs_match": all(within.values()),
        "full_depth_at_least_1.1x_torch_best_every_shape": all(
            by_case[f"{b}x{t}"]["jax_best_over_torch_best"] >= 1.1 for b, t in SHAPES
        ),
        "early_exit_at_least_4x_torch_best_on_sst2_dev": dev["jax_early_exit_over_torch_best"] >= 4,
    }
    report = {
        "benchmark": "beex-jax vs the same BEExformer in PyTorch, full depth and early exit",
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            **worker.info,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "model": {
            "export": args.export,
            "workdir": args.workdir,
            **{
                k: getattr(model_config, k)
                for k in ("num_layers", "hidden_dim", "num_heads", "slfn_dim", "vocab_size")
            },
            "activation_dtype": str(model_config.activation_dtype),
            "dtype": model_config.dtype,
            "jax_modes": modes,
            "jax_export_is": f"jax_export_{auto_mode}",
            "exit": {"policy": exit_config.policy, "delta": exit_config.delta},
        },
        "timing": f"warm-up pass, then 2 alternating rounds (JAX, PyTorch); per round the median "
        f"of {args.repeats} passes; the better round reported",
        "warmup_seconds": {"jax": jax_warmup, "torch": torch_warmup},
        "sst2_dev": {
            "examples": len(labels),
            "batch_size": args.sst2_batch_size,
            "accuracy": accuracy,
        },
        "logits_atol": {"float32": LOGITS_ATOL, "bf16_f32": BF16_LOGITS_ATOL},
        "results": rows,
        "rounds": rounds,
        "targets_met": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"targets: {targets}\nwrote {args.out}")


if __name__ == "__main__":
    main()
