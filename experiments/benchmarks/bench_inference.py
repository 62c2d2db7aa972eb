"""Inference throughput on the real SST-2 dev set: early exit, full depth, full precision.

Run (a few minutes on a 2-core CPU), after training a binarized (and optionally a
full-precision) model:

  python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2 \
      --config.data.glue_dir=../shared/data/glue --config.data.tfds_dir=runs/tfds
  python -m beex_jax.main --config configs/glue.py:task=sst2 --workdir runs/sst2_float \
      --config.data.glue_dir=../shared/data/glue --config.data.tfds_dir=runs/tfds \
      --config.model.binarize=False
  python -m beex_jax.main --mode=export --workdir runs/sst2          # -> runs/sst2/export
  python experiments/benchmarks/bench_inference.py --workdir runs/sst2/export \
      --float_workdir runs/sst2_float

`--workdir` may be a training workdir or an export (the packed 1-bit model, which is what one
deploys); `--latent_workdir` (optional) is the training workdir of the same model, whose latent
weights are binarized once on load, so it should run as fast as the export; `--float_workdir`
(optional) is the full-precision counterpart of the same architecture. The report checks that the
per-example throughput does not fall from batch 32 to 256 (`targets_met`): large batches run as a
loop over cache-sized chunks of rows (`beex_jax.early_exit.chunk_rows`).

What is measured, in one run: for each model, mode (early exit, docs/method.md §3; full depth) and
each batch size, the examples/s of `Predictor.predict_encoded` over the whole dev set: sorting by
length, padding to the bucket lengths and batch sizes, the jitted forward pass and fetching the
results, everything `Predictor.predict` does except tokenizing (measured once, separately). Each
configuration is run once to compile its shapes, then timed `--repeats` times, every
configuration in turn within each repeat (so that another job's load falls on all alike); the
median and the best are reported, the best deciding `targets_met`. Accuracy, mean FLOPs per
example (at real lengths, `beex_jax.flops`) and the mean exit block sit beside each row. JSON
goes to experiments/results/bench_inference.json with the command, the machine and its load
average (the CPUs may be shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from beex_jax import predict
from beex_jax.data import glue_builder
from experiments.machine import describe
from experiments.paths import command_line

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_inference.json"
DEFAULT_GLUE = os.environ.get(
    "BEEX_GLUE_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data" / "glue")
)


def dev_set(glue_dir: str, task: str) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """(texts of each example, labels) of the task's dev split, read from the GLUE folder."""
    path = glue_builder.glue_dir_files(task, glue_dir)["validation"]
    fields = [feature for feature, _ in glue_builder.task_spec(task).text_features]
    with open(path, encoding="utf-8") as f:
        rows = list(glue_builder.read_rows(task, "validation", f, path))
    return [tuple(row[k] for k in fields) for row in rows], np.array([r["label"] for r in rows])


def measure(setups: list[tuple], labels, repeats: int) -> list[dict]:
    """Times `predict_encoded` over the whole set for every (predictor, encoded) setup.

    Every setup is compiled first; then each repeat times every setup once, in turn, so that a
    change of the machine's load (it may be shared) falls on all of them alike.
    """
    outputs = [predictor.predict_encoded(encoded) for predictor, encoded in setups]  # Compiles.
    seconds: list[list[float]] = [[] for _ in setups]
    for _ in range(repeats):
        for i, (predictor, encoded) in enumerate(setups):
            start = time.perf_counter()
            outputs[i] = predictor.predict_encoded(encoded)
            seconds[i].append(time.perf_counter() - start)
    results = []
    for out, times in zip(outputs, seconds, strict=True):
        median, best = statistics.median(times), min(times)
        results.append(
            {
                "examples_per_second": len(labels) / median,
                "examples_per_second_best": len(labels) / best,
                "seconds_median": median,
                "seconds": times,
                "accuracy": float(np.mean(out["prediction"] == labels)),
                "mean_flops": float(np.mean(out["flops"])),
                "mean_exit_block": float(np.mean(out["exit_index"] + 1)),
            }
        )
    return results


def model_info(predictor) -> dict:
    """What describes a loaded model in the report."""
    params = jax.tree.leaves(predictor.params)
    return {
        "source": predictor.source,
        "binarize": predictor.model_config.binarize,
        "packed_weights": predictor.model_config.packed_weights,
        "activation_dtype": str(predictor.model_config.activation_dtype),
        "compute_dtype": predictor.model_config.compute_dtype,  # model.dtype as resolved here.
        "chunk": {
            k: getattr(predictor.exit_config, k)
            for k in ("chunk_size", "chunk_tokens", "min_chunks")
        },
        "vocab_size": predictor.model_config.vocab_size,
        "num_params": int(sum(p.size for p in params)),
        "num_layers": predictor.model_config.num_layers,
        "exit": {"policy": predictor.exit_config.policy, "delta": predictor.exit_config.delta},
    }


def main() -> None:
    """Runs the benchmark, prints a table and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="Binarized model: workdir or export.")
    parser.add_argument("--latent_workdir", default=None, help="Its training workdir.")
    parser.add_argument("--float_workdir", default=None, help="Full-precision counterpart.")
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE)
    parser.add_argument("--batch_sizes", default="1,32,64,128,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS), type=Path)
    args = parser.parse_args()
    load_start = os.getloadavg()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    models = {
        "binarized": args.workdir,
        "binarized_latent_workdir": args.latent_workdir,
        "full_precision": args.float_workdir,
    }
    models = {name: path for name, path in models.items() if path}
    info, rows, setups = {}, [], []
    texts = labels = None
    for name, path in models.items():
        base = predict.load(path)
        if texts is None:
            texts, labels = dev_set(args.glue_dir, base.task)
        start = time.perf_counter()
        encoded = base.encode(texts)
        tokenize_rate = len(texts) / (time.perf_counter() - start)
        info[name] = dict(model_info(base), tokenize_examples_per_second=tokenize_rate)
        for mode in predict.MODES:
            for batch_size in batch_sizes:
                predictor = predict.Predictor(
                    base.params,
                    base.config,
                    base.tokenizer,
                    mode=mode,
                    batch_size=batch_size,
                    source=path,
                )
                rows.append({"model": name, "mode": mode, "batch_size": batch_size})
                setups.append((predictor, encoded))
    for row, result in zip(rows, measure(setups, labels, args.repeats), strict=True):
        row.update(result)
        print(
            f"{row['model']:<15}{row['mode']:<12}batch {row['batch_size']:>4}: "
            f"{row['examples_per_second']:>9.1f} examples/s "
            f"(best {row['examples_per_second_best']:.1f})  accuracy {row['accuracy']:.4f}  "
            f"mean FLOPs {row['mean_flops'] / 1e6:.2f}M  "
            f"mean exit block {row['mean_exit_block']:.2f}",
            flush=True,
        )
    targets = {}
    for name in models:
        for mode in predict.MODES:
            rates = {  # Best of the repeats: the least disturbed by other jobs.
                r["batch_size"]: r["examples_per_second_best"]
                for r in rows
                if r["model"] == name and r["mode"] == mode and 32 <= r["batch_size"] <= 256
            }
            ordered = [rates[b] for b in sorted(rates)]
            targets[f"{name}/{mode}/throughput_non_decreasing_32_to_256"] = all(
                b >= a for a, b in itertools.pairwise(ordered)
            )
            targets[f"{name}/{mode}/throughput_256_over_32"] = (
                rates[256] / rates[32] if 32 in rates and 256 in rates else None
            )
    report = {
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "dataset": {"task": base.task, "split": "validation", "examples": len(labels)},
        "timed": "Predictor.predict_encoded over the whole dev set (tokenizing excluded), "
        f"{args.repeats} repeats after a compiling pass, each repeat timing every setup in turn; "
        "median (examples_per_second) and best (examples_per_second_best, used by targets_met)",
        "models": info,
        "results": rows,
        "targets_met": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
