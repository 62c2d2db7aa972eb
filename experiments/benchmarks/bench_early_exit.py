"""Wall-clock of early-exit inference vs the full-depth forward pass, next to the FLOPs ideal.

Run (a few minutes on a 2-core CPU), on a trained model and the real SST-2 dev set:

  python experiments/benchmarks/bench_early_exit.py --workdir runs/sst2-short/export \
      --batch_sizes=8,32,256 --out experiments/results/bench_early_exit_sst2.json

or, without --workdir, on the default (`small`) SST-2 model at random initialisation and random
token ids whose lengths follow SST-2 dev (whitespace tokens + 2, capped at 64), each batch padded to
the next bucket length; an untrained model's exits cannot be steered, so delta is then picked by
bisection on a separate calibration set to save about half the FLOPs (`--target_saving`).

With --workdir (a training workdir or an export; weights binarized once on load) the dev set is
batched as `Predictor` batches it (sorted by length, padded to the bucket lengths) and the model's
own exit rule (`config.exit`) decides. Early exit runs the active examples in chunks whose size is
chosen from the batch (`beex_jax.early_exit.exit_chunk_rows`; `--chunk_size` fixes it). Timed, all
jitted, warmed up first, then alternately, each call waited on with `block_until_ready`:

  full_same_chunks  the full-depth forward in the very chunks early exit uses: the baseline of
                    the ratio below, so that it measures skipping work, not a batching effect;
  full_default      the full-depth forward as inference runs it (`chunk_rows`, cache-sized);
  early             early-exit inference.

ideal speedup    = full-depth FLOPs / early-exit FLOPs, at real lengths (`beex_jax.flops`).
measured speedup = median wall-clock of full_same_chunks / that of early exit; the speedup over
full_default is reported beside it. Results go to experiments/results/bench_early_exit.json (or
--out) with the command, the machine and its load average.
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

from beex_jax import early_exit, flops, predict
from beex_jax import exits as ex
from beex_jax.model import ModelConfig, inference_params, init_params
from configs import glue
from experiments.machine import describe
from experiments.paths import command_line

_apply_policy = jax.jit(ex.apply_policy)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_early_exit.json"
GLUE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"  # ../shared/data/glue


def sst2_dev_lengths(path: Path, max_length: int) -> np.ndarray:
    """Token counts of SST-2 dev sentences: whitespace tokens + 2, capped at max_length."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # Header: sentence<TAB>label.
    counts = [len(line.split("\t")[0].split()) + 2 for line in lines if line.strip()]
    return np.minimum(np.asarray(counts), max_length)


def make_batches(
    lengths: np.ndarray, batch_size: int, num_batches: int, vocab_size: int, buckets, rng
) -> list[dict[str, jax.Array]]:
    """Random-token batches with lengths drawn from `lengths`, padded to the next bucket."""
    batches = []
    for _ in range(num_batches):
        lens = rng.choice(lengths, size=batch_size)
        width = min(b for b in buckets if b >= lens.max())
        mask = (np.arange(width)[None] < lens[:, None]).astype(np.int32)
        ids = rng.integers(1, vocab_size, size=(batch_size, width)).astype(np.int32) * mask
        batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": mask}
        batches.append({k: jax.device_put(v) for k, v in batch.items()})
    return batches


def flops_saved(model_config, batches, all_logits, exit_config) -> float:
    """1 - early-exit FLOPs / full-depth FLOPs over the batches, at real lengths."""
    spent = full = 0.0
    for batch, logits in zip(batches, all_logits, strict=True):
        lengths = jnp.sum(batch["mask"], axis=-1)
        decision = _apply_policy(logits, exit_config)
        spent += float(flops.per_example_flops(model_config, lengths, decision.last_block).sum())
        full += float(flops.full_depth_flops(model_config, lengths).sum())
    return 1.0 - spent / full


def calibrate_delta(model_config, params, batches, base: ex.ExitConfig, target: float):
    """Bisection on delta (larger delta exits earlier) for a FLOPs saving close to `target`."""
    all_logits = [
        early_exit.full_depth_logits(
            params, b["input_ids"], b["segment_ids"], b["mask"], model_config=model_config
        )
        for b in batches
    ]
    low, high = -1.0, 1.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        saved = flops_saved(model_config, batches, all_logits, base.replace(delta=mid))
        low, high = (low, mid) if saved > target else (mid, high)
    delta = 0.5 * (low + high)
    return delta, flops_saved(model_config, batches, all_logits, base.replace(delta=delta))


def timed(fn, batches) -> float:
    """Seconds to run `fn` on every batch, waiting for each result."""
    start = time.perf_counter()
    for batch in batches:
        jax.block_until_ready(fn(batch))
    return time.perf_counter() - start


def dev_batches(predictor, glue_dir: str, batch_size: int) -> list[dict[str, jax.Array]]:
    """The dev set batched as `Predictor` does (by length and bucket), with `num_rows` real."""
    from experiments.benchmarks.bench_inference import dev_set

    texts, _ = dev_set(glue_dir, predictor.task)
    predictor.batch_size = batch_size
    predictor.batch_sizes = predict.batch_sizes(batch_size)
    return [
        {**{k: jax.device_put(v) for k, v in batch.items()}, "num_rows": np.int32(len(rows))}
        for rows, batch in predictor.batches(predictor.encode(texts))
    ]


def main() -> None:
    """Runs the benchmark and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="Trained model: real SST-2 dev set.")
    parser.add_argument("--glue_dir", default=str(GLUE_DIR))
    parser.add_argument("--batch_sizes", default="1,8,32,256")
    parser.add_argument("--examples", type=int, default=256, help="Timed examples per size.")
    parser.add_argument("--examples_batch_1", type=int, default=48)
    parser.add_argument("--chunk_size", type=int, default=None, help="Overrides config.exit.")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target_saving", type=float, default=0.5)
    parser.add_argument("--dev_tsv", default=str(GLUE_DIR / "SST-2" / "dev.tsv"), type=Path)
    parser.add_argument("--out", default=str(RESULTS), type=Path)
    args = parser.parse_args()

    predictor = None
    if args.workdir:
        predictor = predict.load(args.workdir)  # Weights binarized once.
        params, model_config = predictor.params, predictor.model_config
        exit_config, delta, calibration_saving = predictor.exit_config, None, None
        buckets = tuple(predictor.config.data.bucket_boundaries)
    else:
        config = glue.get_config("task=sst2")
        latent_config = ModelConfig.from_config(config.model)
        params, model_config = inference_params(
            init_params(latent_config, jax.random.key(config.seed)), latent_config
        )
        exit_config = ex.ExitConfig.from_config(config.exit)
        buckets = tuple(config.data.bucket_boundaries)
        lengths = sst2_dev_lengths(args.dev_tsv, config.data.max_length)
        rng = np.random.default_rng(0)
        calibration = make_batches(lengths, 128, 8, model_config.vocab_size, buckets, rng)
        delta, calibration_saving = calibrate_delta(
            model_config, params, calibration, exit_config, args.target_saving
        )
        exit_config = exit_config.replace(delta=delta)
        print(f"delta={delta:.5f} saves {calibration_saving:.1%} of FLOPs on the calibration set")
    if args.chunk_size:
        exit_config = exit_config.replace(chunk_size=args.chunk_size)

    def full(batch, chunk_size=0):
        return early_exit.full_depth_logits(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            model_config=model_config,
            chunk_size=chunk_size,
            num_rows=batch.get("num_rows"),
        )

    def full_same_chunks(batch):
        chunk = early_exit.exit_chunk_rows(exit_config, *batch["input_ids"].shape)
        return full(batch, chunk)

    def early(batch):
        return early_exit.early_exit_forward(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            exit_config,
            model_config=model_config,
            num_rows=batch.get("num_rows"),
        )

    runs = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        if predictor is not None:
            batches = dev_batches(predictor, args.glue_dir, batch_size)
        else:
            examples = args.examples_batch_1 if batch_size == 1 else args.examples
            batches = make_batches(
                lengths,
                batch_size,
                max(1, examples // batch_size),
                model_config.vocab_size,
                buckets,
                rng,
            )
        # Warm-up: compile every bucket width and check early exit against the reference.
        for fn in (full, full_same_chunks, early):
            timed(fn, batches)
        spent = full_flops = 0.0
        exit_index, rows_run, mismatches = [], 0, 0
        for batch in batches:
            outputs, work = early(batch)
            real = int(batch.get("num_rows", len(batch["mask"])))  # Padding rows not counted.
            reference = early_exit.full_depth_forward(
                params,
                batch["input_ids"],
                batch["segment_ids"],
                batch["mask"],
                exit_config,
                model_config=model_config,
            )
            mismatches += int(
                np.sum(
                    (np.asarray(outputs["exit_index"]) != np.asarray(reference["exit_index"]))[
                        :real
                    ]
                    | (np.asarray(outputs["prediction"]) != np.asarray(reference["prediction"]))[
                        :real
                    ]
                )
            )
            lens = jnp.sum(batch["mask"][:real], axis=-1)
            spent += float(outputs["flops"][:real].sum())
            full_flops += float(flops.full_depth_flops(model_config, lens).sum())
            exit_index.append(np.asarray(outputs["exit_index"])[:real])
            rows_run += int(work["rows_run"])
        same_times, default_times, early_times = [], [], []
        for _ in range(args.repeats):
            same_times.append(timed(full_same_chunks, batches))
            default_times.append(timed(full, batches))
            early_times.append(timed(early, batches))
        same_s, default_s = statistics.median(same_times), statistics.median(default_times)
        early_s = statistics.median(early_times)
        num_examples = sum(int(b.get("num_rows", len(b["mask"]))) for b in batches)
        ideal, measured = full_flops / spent, same_s / early_s
        exit_index = np.concatenate(exit_index)
        widths = sorted({int(b["mask"].shape[1]) for b in batches})
        run = {
            "batch_size": batch_size,
            "num_batches": len(batches),
            "num_examples": num_examples,
            "padded_lengths": widths,
            "early_exit_chunk_rows": {
                w: early_exit.exit_chunk_rows(exit_config, batch_size, w) for w in widths
            },
            "full_default_chunk_rows": {
                w: early_exit.chunk_rows(batch_size, w, chunk_tokens=exit_config.chunk_tokens)
                for w in widths
            },
            "full_same_chunks_s_median": same_s,
            "full_default_s_median": default_s,
            "early_exit_s_median": early_s,
            "full_same_chunks_ms_per_example": 1e3 * same_s / num_examples,
            "full_default_ms_per_example": 1e3 * default_s / num_examples,
            "early_exit_ms_per_example": 1e3 * early_s / num_examples,
            "full_same_chunks_s_repeats": same_times,
            "full_default_s_repeats": default_times,
            "early_exit_s_repeats": early_times,
            "flops_saved": 1.0 - spent / full_flops,
            "ideal_speedup_flops": ideal,
            "measured_speedup": measured,
            "measured_over_ideal": measured / ideal,
            "speedup_over_full_default": default_s / early_s,
            "exit_histogram": early_exit.exit_histogram(
                exit_index, model_config.num_layers
            ).tolist(),
            "mean_exit_block": float(np.mean(exit_index + 1)),
            # Example-blocks computed by early exit (partial chunks padded to the chunk size),
            # and what exact per-example stopping would need.
            "early_exit_rows_run": rows_run,
            "rows_needed": int(np.sum(exit_index + 1)),
            "rows_full_depth": num_examples * model_config.num_layers,
            "mismatches_vs_reference": mismatches,
        }
        runs.append(run)
        print(
            f"batch {batch_size:4d}: full (same chunks) {1e3 * same_s:8.1f} ms, full (default) "
            f"{1e3 * default_s:8.1f} ms, early {1e3 * early_s:8.1f} ms ({num_examples} examples)"
            f" | speedup {measured:.2f}x, ideal {ideal:.2f}x ({measured / ideal:.0%} of ideal), "
            f"{default_s / early_s:.2f}x the default full depth | exits {run['exit_histogram']}",
            flush=True,
        )

    targets = {
        f"batch_{r['batch_size']}_measured_at_least_0.9_ideal": r["measured_over_ideal"] >= 0.9
        for r in runs
        if r["batch_size"] > 1
    }
    notes = [
        f"batch {r['batch_size']}: {r['measured_over_ideal']:.0%} of the ideal speedup; early exit "
        f"computed {r['early_exit_rows_run']} example-blocks where exact stopping needs "
        f"{r['rows_needed']} (full depth: {r['rows_full_depth']}): each block runs whole chunks "
        f"of {r['early_exit_chunk_rows']} rows (by padded length), so a chunk keeps computing "
        "exited examples until all of its rows have exited."
        for r in runs
        if r["early_exit_rows_run"] > 1.2 * r["rows_needed"]
    ]
    report = {
        "benchmark": "early-exit inference vs full depth (wall-clock and FLOPs)",
        "command": command_line(sys.argv),
        "machine": {
            **describe(),
            # The machine is shared: other processes' load at the end of the run (1, 5, 15 min).
            "load_average": list(os.getloadavg()),
        },
        "model": {
            "config": args.workdir or "configs/glue.py:task=sst2 (size=small, the default)",
            **{
                k: getattr(model_config, k)
                for k in (
                    "num_layers",
                    "hidden_dim",
                    "num_heads",
                    "slfn_dim",
                    "exit_dim",
                    "vocab_size",
                    "binarize",
                )
            },
        },
        "inputs": "the real SST-2 dev set, batched as Predictor does (sorted by length, padded "
        f"to the buckets {list(buckets)})"
        if args.workdir
        else "random token ids (speed only), lengths drawn from SST-2 dev "
        "(whitespace tokens + 2, capped at 64), padded to the next bucket "
        f"{list(buckets)}",
        "weights": f"trained: {args.workdir}, binarized once on load"
        if args.workdir
        else "random initialisation (untrained), binarized once; exits steered by delta "
        "calibration",
        "exit": {
            "policy": exit_config.policy,
            "delta": exit_config.delta if delta is None else delta,
            "delta_chosen_by": "the model's config.exit"
            if delta is None
            else f"bisection on 8 x 128 calibration examples for "
            f"{args.target_saving:.0%} FLOPs saved",
            "calibration_flops_saved": calibration_saving,
            "min_exit_block": exit_config.min_exit_block,
            "answer_from": exit_config.answer_from,
            "chunk_size": exit_config.chunk_size or "auto (exit_chunk_rows)",
            "chunk_tokens": exit_config.chunk_tokens,
            "min_chunks": exit_config.min_chunks,
        },
        "timing": f"jit + warm-up, block_until_ready per call, median of {args.repeats} "
        "alternating repeats over the same batches",
        "baseline": "full_depth_logits (all blocks, jitted) in the chunks early exit uses "
        "(measured_speedup) and in inference's default chunks (speedup_over_full_default)",
        "runs": runs,
        "targets_met": targets,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"targets: {targets}\nwrote {args.out}")


if __name__ == "__main__":
    main()
