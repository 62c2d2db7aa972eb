"""Dev-set evaluation during training: the metric of every exit, early exit, and its cost.

For each dev split (MNLI has two) it reports:
  exit_<i>/<metric>       the GLUE metrics of exit i alone (1-based), i.e. a model cut after
                          block i, and `exit_<i>/glue_score`, GLUE's single score of the task;
  early_exit/<metric>     the same with early exit at the configured delta (docs/method.md §3);
  mean_exit_block         the mean 1-based exit that answers;
  mean_blocks_run         the mean number of blocks computed (differs with answer_from=previous);
  flops_saved             1 - FLOPs spent with early exit / FLOPs of running every block;
  exit_histogram          how many examples answer from each exit (list of L counts).
The `score` used to keep the best checkpoint is the early-exit GLUE score of the first split
(mean of F1 and accuracy for MRPC/QQP, of Pearson and Spearman for STS-B; `metrics.glue_score`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from beex_jax import early_exit, flops, metrics, sharding
from beex_jax import exits as ex
from beex_jax import model as model_lib
from beex_jax.model import ModelConfig

Params = Any
EvalStep = Callable[[Params, dict[str, jax.Array]], dict[str, jax.Array]]
INPUT_KEYS = ("input_ids", "segment_ids", "mask", "label", "weight")


def inference_params(config: ml_collections.ConfigDict, params: Params) -> Params:
    """The parameters `make_eval_step` reads: latent binary weights binarized once (jitted)."""
    return model_lib.inference_params(params, ModelConfig.from_config(config.model))[0]


def make_eval_step(config: ml_collections.ConfigDict, mesh: Mesh) -> EvalStep:
    """Jitted (inference params, global batch) -> per-example predictions of every exit.

    The params are `inference_params(config, params)`: binarized once per evaluation, not per
    batch. Outputs are replicated so that every process can read all of them.
    """
    model_config = ModelConfig.from_config(config.model)
    if not model_config.packed_weights:
        model_config = model_config.for_inference()
    exit_config = ex.ExitConfig.from_config(config.exit)
    # One device: chunks of rows as in inference; a sharded batch is not re-split.
    chunk_size = exit_config.chunk_size if mesh.devices.size == 1 else config.eval_batch_size

    def step(params, batch):
        all_logits = early_exit.full_depth_logits(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            model_config=model_config,
            chunk_size=chunk_size,
        )
        # Every exit's logits are needed here anyway, and the online policy applied to them is
        # exactly what early-exit inference returns, so the blocks are not run a second time.
        lengths = jnp.sum(batch["mask"], axis=-1).astype(jnp.int32)
        early = early_exit.apply_exit_policy(
            all_logits, lengths, exit_config, model_config=model_config
        )
        return {
            "exit_predictions": ex.prediction(all_logits),  # [L, B]
            "prediction": early["prediction"],
            "exit_index": early["exit_index"],
            "last_block": early["last_block"],
            "flops": early["flops"],
            "full_flops": flops.full_depth_flops(model_config, lengths),
            "label": batch["label"],
            "weight": batch["weight"],
        }

    return jax.jit(step, out_shardings=sharding.replicated(mesh))


def summarize(outputs: Mapping[str, np.ndarray], *, task: str, num_layers: int) -> dict[str, Any]:
    """Dev metrics from the concatenated per-example outputs of `make_eval_step`."""
    keep = outputs["weight"] > 0  # Padding examples of the last batch have weight 0.
    labels = outputs["label"][keep]
    result: dict[str, Any] = {"num_examples": int(keep.sum())}
    for i in range(num_layers):
        per_exit = metrics.glue_metrics(task, outputs["exit_predictions"][i][keep], labels)
        per_exit["glue_score"] = metrics.glue_score(task, per_exit)
        result.update({f"exit_{i + 1}/{k}": v for k, v in per_exit.items()})
    early = metrics.glue_metrics(task, outputs["prediction"][keep], labels)
    early["glue_score"] = metrics.glue_score(task, early)
    result.update({f"early_exit/{k}": v for k, v in early.items()})
    exit_index = outputs["exit_index"][keep]
    result["mean_exit_block"] = float(np.mean(exit_index + 1))
    result["mean_blocks_run"] = float(np.mean(outputs["last_block"][keep] + 1))
    result["flops_saved"] = float(
        1.0 - outputs["flops"][keep].sum() / max(outputs["full_flops"][keep].sum(), 1.0)
    )
    result["exit_histogram"] = early_exit.exit_histogram(exit_index, num_layers).tolist()
    return result


def evaluate_split(
    eval_step: EvalStep,
    params: Params,
    batches: Iterable[dict[str, np.ndarray]],
    mesh: Mesh,
    *,
    task: str,
    num_layers: int,
) -> dict[str, Any]:
    """Runs `eval_step` over a split's (process-local) batches and summarizes the metrics."""
    collected: dict[str, list[np.ndarray]] = {}
    for local in batches:
        batch = sharding.global_batch({k: local[k] for k in INPUT_KEYS}, mesh)
        for key, value in eval_step(params, batch).items():
            collected.setdefault(key, []).append(np.asarray(value))
    if not collected:
        raise ValueError("The evaluation split is empty.")
    axis = {"exit_predictions": 1}  # [L, B]: examples on the second axis.
    outputs = {k: np.concatenate(v, axis=axis.get(k, 0)) for k, v in collected.items()}
    return summarize(outputs, task=task, num_layers=num_layers)


def score(results: Mapping[str, Mapping[str, Any]]) -> float:
    """The model-selection score: the early-exit GLUE score of the first dev split."""
    return float(next(iter(results.values()))["early_exit/glue_score"])


def record_score(record: Mapping[str, Any], split: str, exit_name: str, task: str) -> float | None:
    """GLUE score of `exit_name` ("early_exit" or "exit_<i>") in a logged evaluation record.

    None if the record holds no evaluation of `split`. Records written before `glue_score` was
    logged are scored from their metrics.
    """
    prefix = f"{split}/{exit_name}/"
    if prefix + "glue_score" in record:
        return float(record[prefix + "glue_score"])
    values = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
    return metrics.glue_score(task, values) if values else None


def selection_report(
    records: Sequence[Mapping[str, Any]], task: str, num_layers: int
) -> dict[str, Any]:
    """Which evaluation the recipe keeps, and the last exit both there and at its own best.

    `records` are a run's metrics.jsonl lines. The kept evaluation has the best early-exit GLUE
    score (the earliest of equal ones); `last_exit_best` is the best last-exit GLUE score over all
    evaluations, so that "early exit >= last exit" is not read off a checkpoint chosen by early
    exit. Scores are fractions, as logged.
    """
    split = eval_split_names_of(records)
    last = f"exit_{num_layers}"
    evaluations = [r for r in records if record_score(r, split, "early_exit", task) is not None]
    if not evaluations:
        raise ValueError("No dev evaluation in the records.")
    kept = max(evaluations, key=lambda r: record_score(r, split, "early_exit", task))
    best_last = max(evaluations, key=lambda r: record_score(r, split, last, task))
    return {
        "split": split,
        "kept": kept,
        "kept_step": kept["step"],
        "early_exit": record_score(kept, split, "early_exit", task),
        "last_exit": record_score(kept, split, last, task),
        "last_exit_best": record_score(best_last, split, last, task),
        "last_exit_best_step": best_last["step"],
        "final": evaluations[-1],
    }


def eval_split_names_of(records: Sequence[Mapping[str, Any]]) -> str:
    """The first dev split named in evaluation records ("validation", "validation_matched")."""
    for record in records:
        for key in record:
            if "/early_exit/" in key:
                return key.split("/")[0]
    raise ValueError("No dev evaluation in the records.")
