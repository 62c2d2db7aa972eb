"""Dev-set evaluation during training: the metric of every exit, early exit, and its cost.

For each dev split (MNLI has two) it reports:
  exit_<i>/<metric>       the GLUE metric of exit i alone (1-based), i.e. a model cut after block i;
  early_exit/<metric>     the metric with the early-exit rule at the configured delta (SPEC §3);
  mean_exit_block         the mean 1-based exit that answers;
  mean_blocks_run         the mean number of blocks computed (differs with answer_from=previous);
  flops_saved             1 - FLOPs spent with early exit / FLOPs of running every block;
  exit_histogram          how many examples answer from each exit (list of L counts).
The `score` used to keep the best checkpoint is the early-exit primary metric of the first split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from beex_jax import early_exit, flops, metrics, sharding
from beex_jax import exits as ex
from beex_jax.model import ModelConfig

Params = Any
EvalStep = Callable[[Params, dict[str, jax.Array]], dict[str, jax.Array]]
INPUT_KEYS = ("input_ids", "segment_ids", "mask", "label", "weight")


def make_eval_step(config: ml_collections.ConfigDict, mesh: Mesh) -> EvalStep:
    """Jitted (params, global batch) -> per-example predictions of every exit and early exit.

    Outputs are replicated so that every process can read all of them.
    """
    model_config = ModelConfig.from_config(config.model)
    exit_config = ex.ExitConfig.from_config(config.exit)

    def step(params, batch):
        all_logits = early_exit.full_depth_logits(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            model_config=model_config,
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
        result.update({f"exit_{i + 1}/{k}": v for k, v in per_exit.items()})
    early = metrics.glue_metrics(task, outputs["prediction"][keep], labels)
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


def score(results: Mapping[str, Mapping[str, Any]], task: str) -> float:
    """The model-selection score: early-exit primary metric of the first dev split."""
    first = next(iter(results.values()))
    return float(first[f"early_exit/{metrics.primary_metric_name(task)}"])
