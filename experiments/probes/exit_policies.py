"""Exit policies compared on the same trained models, at matched mean FLOPs.

  python experiments/probes/exit_policies.py --workdirs=runs/sweeps/reproduction/sst2-binary \
      [--glue_dir=../shared/data/glue] [--out=experiments/results/exit_policies.json]

For each trained model (its best checkpoint) the logits of every exit on the dev set are computed
once; each policy is swept over its parameter: fractional entropy reduction (ours, docs/method.md
§3; delta), absolute entropy threshold (DeeBERT; threshold as a fraction of log C) and patience
(PABEE; patience). Every policy is online (it decides at block i from exits <= i), so applying it to
the full-depth logits gives exactly what early-exit inference returns (tests/test_early_exit.py).
Each point reports the dev metric, mean exit block, and mean FLOPs as a fraction of full depth;
`matched` gives each policy's best metric within FLOPs budgets (its Pareto frontier).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beex_jax import checkpointing, data, early_exit, flops, metrics  # noqa: E402
from beex_jax import exits as ex  # noqa: E402
from beex_jax.model import ModelConfig, inference_params  # noqa: E402
from experiments.paths import command_line  # noqa: E402

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Training workdirs of the models to compare.")
_GLUE_DIR = flags.DEFINE_string("glue_dir", None, "Override the GLUE folder in the run config.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "experiments/results/exit_policies.json"), "JSON output."
)

DELTAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
THRESHOLD_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)
FLOPS_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def dev_logits(params: Any, config: Any, split: str) -> dict[str, np.ndarray]:
    """Logits of every exit [L, N, C], labels [N] and lengths [N] on a dev split."""
    # Binarized once, not on every batch.
    params, model_config = inference_params(params, ModelConfig.from_config(config.model))
    input_ = data.create_input(config)
    parts: dict[str, list[np.ndarray]] = {"logits": [], "label": [], "length": []}
    for batch in input_.eval_batches(split):
        keep = batch["weight"] > 0
        logits = early_exit.full_depth_logits(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            model_config=model_config,
        )
        parts["logits"].append(np.asarray(logits)[:, keep])
        parts["label"].append(batch["label"][keep])
        parts["length"].append(batch["mask"][keep].sum(-1).astype(np.int32))
    return {
        "logits": np.concatenate(parts["logits"], axis=1),
        "label": np.concatenate(parts["label"]),
        "length": np.concatenate(parts["length"]),
    }


_decide = jax.jit(early_exit.apply_exit_policy, static_argnames="model_config")


def evaluate_policy(
    outputs: dict[str, np.ndarray], exit_config: ex.ExitConfig, model_config: ModelConfig, task: str
) -> dict[str, Any]:
    """Dev metric, mean exit block and FLOPs fraction of one policy setting."""
    lengths = jnp.asarray(outputs["length"])
    early = _decide(jnp.asarray(outputs["logits"]), lengths, exit_config, model_config=model_config)
    answer, exit_index = early["prediction"], early["exit_index"]
    spent = early["flops"]
    full = flops.full_depth_flops(model_config, lengths)
    primary = metrics.primary_metric_name(task)
    return {
        "metric": metrics.glue_metrics(task, np.asarray(answer), outputs["label"])[primary],
        "mean_exit_block": float(np.mean(np.asarray(exit_index) + 1)),
        "flops_fraction": float(jnp.sum(spent) / jnp.sum(full)),
        "exit_histogram": np.bincount(
            np.asarray(exit_index), minlength=model_config.num_layers
        ).tolist(),
    }


def policy_grid(num_layers: int, num_classes: int) -> list[tuple[str, float, ex.ExitConfig]]:
    """(policy, parameter, ExitConfig) for every point of every policy's sweep."""
    grid = [
        ("entropy_reduction", d, ex.ExitConfig(policy="entropy_reduction", delta=d)) for d in DELTAS
    ]
    if num_classes > 1:  # DeeBERT's entropy threshold needs class probabilities.
        grid += [
            (
                "entropy_threshold",
                f,
                ex.ExitConfig(
                    policy="entropy_threshold",
                    entropy_threshold=f * float(np.log(num_classes)),
                    min_exit_block=1,
                ),
            )
            for f in THRESHOLD_FRACTIONS
        ]
    grid += [
        ("patience", p, ex.ExitConfig(policy="patience", patience=p, min_exit_block=1))
        for p in range(1, num_layers)
    ]
    return grid


def frontier(points: list[dict[str, Any]]) -> dict[str, float | None]:
    """Best metric of a policy within each FLOPs budget (None if no setting fits)."""
    out = {}
    for budget in FLOPS_BUDGETS:
        fitting = [p["metric"] for p in points if p["flops_fraction"] <= budget + 1e-9]
        out[f"{budget:.1f}"] = max(fitting) if fitting else None
    return out


def compare(workdir: str) -> dict[str, Any]:
    """Every policy setting on one trained model's dev set."""
    params, config = checkpointing.restore_params(workdir, which="best")
    if _GLUE_DIR.value:
        config.data.glue_dir = _GLUE_DIR.value
    model_config = ModelConfig.from_config(config.model)
    split = data.eval_split_names(config.task)[0]
    outputs = dev_logits(params, config, split)
    points = []
    for policy, parameter, exit_config in policy_grid(
        model_config.num_layers, model_config.num_classes
    ):
        result = evaluate_policy(outputs, exit_config, model_config, config.task)
        points.append({"policy": policy, "parameter": parameter, **result})
    per_exit = [
        metrics.glue_metrics(
            config.task, np.asarray(ex.prediction(jnp.asarray(z))), outputs["label"]
        )[metrics.primary_metric_name(config.task)]
        for z in outputs["logits"]
    ]
    policies = sorted({p["policy"] for p in points})
    return {
        "workdir": workdir,
        "task": config.task,
        "split": split,
        "binarize": bool(config.model.binarize),
        "num_examples": int(outputs["label"].shape[0]),
        "metric": metrics.primary_metric_name(config.task),
        "per_exit_metric": per_exit,
        "points": points,
        "matched_flops": {
            policy: frontier([p for p in points if p["policy"] == policy]) for policy in policies
        },
    }


def main(argv: list[str]) -> None:
    """Compares the policies on each workdir and writes one JSON."""
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs is required.")
    results = {
        "command": command_line(sys.argv),
        "models": [compare(w) for w in _WORKDIRS.value],
    }
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(results, indent=2))
    for model in results["models"]:
        print(f"\n{model['workdir']} ({model['task']} {model['split']}, {model['metric']})")
        print("best metric within a FLOPs budget (fraction of full depth):")
        for policy, row in model["matched_flops"].items():
            cells = " ".join(
                f"{b}:{'-' if v is None else f'{100 * v:.1f}'}" for b, v in row.items()
            )
            print(f"  {policy:18s} {cells}")


if __name__ == "__main__":
    app.run(main)
