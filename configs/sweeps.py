"""Sweeps: named lists of training runs (config variant + overrides) for experiments/sweep.py.

  python experiments/sweep.py --sweep=reproduction --root=runs/sweeps \
      --glue_dir=../shared/data/glue

Budgets are sized for a 2-core CPU (each run about 30 minutes at most); they are overrides like
any other, so a run on an accelerator drops them (`--budget=full`).
"""

from __future__ import annotations

import dataclasses

# Tasks with train and dev files in ../shared/data/glue (QNLI train, QQP and MNLI are missing).
REPRODUCTION_TASKS = ("sst2", "cola", "mrpc", "rte", "stsb", "wnli")
# Per-task CPU budget (2 cores, ~100-200 training examples/s for the small model): one epoch of
# SST-2 (67k examples), three of the small tasks, ten of WNLI (635 examples).
CPU_BUDGET = {
    "sst2": {"num_epochs": 1},
    "cola": {"num_epochs": 3},
    "mrpc": {"num_epochs": 3},
    "rte": {"num_epochs": 3},
    "stsb": {"num_epochs": 3},
    "wnli": {"num_epochs": 10},
}
# Ablations train each variant shorter: SST-2 300 steps (9.6k examples), MRPC two epochs.
ABLATION_CPU_BUDGET = {"sst2": {"num_train_steps": 300}, "mrpc": {"num_epochs": 2}}
ABLATION_TASKS = ("sst2", "mrpc")
ABLATIONS = {
    "surrogate": ("approx_sign", "ste_clip", "identity"),
    "scale": ("per_channel", "per_tensor", "none"),
    "slfn": (True, False),
    "loss": ("soft_routing", "mean", "weighted"),
}
ABLATION_FIELD = {
    "surrogate": "model.surrogate",
    "scale": "model.scale",
    "slfn": "model.slfn",
    "loss": "loss.name",
}
DEFAULTS = {
    "surrogate": "approx_sign",
    "scale": "per_channel",
    "slfn": True,
    "loss": "soft_routing",
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: `configs/glue.py:<variant>` with `--config.<key>=<value>` overrides."""

    name: str
    variant: str
    overrides: tuple[tuple[str, object], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


def _budget(task: str, budget: str, table: dict | None = None) -> tuple[tuple[str, object], ...]:
    return tuple((table or CPU_BUDGET)[task].items()) if budget == "cpu" else ()


def reproduction(budget: str = "cpu") -> list[Run]:
    """Binarized and full-precision BEExformer on every task with local GLUE files."""
    runs = []
    for task in REPRODUCTION_TASKS:
        for precision, binarize in (("binary", True), ("float", False)):
            runs.append(
                Run(
                    name=f"{task}-{precision}",
                    variant=f"task={task}",
                    overrides=(("model.binarize", binarize), *_budget(task, budget)),
                    tags=(("task", task), ("precision", precision)),
                )
            )
    return runs


def ablations(budget: str = "cpu") -> list[Run]:
    """One factor at a time away from the default, on SST-2 and MRPC (binarized).

    Runs live in the same root as the reproduction's, so a default run with the same budget
    (MRPC) is the reproduction's `mrpc-binary` and is trained once.
    """
    runs = []
    for task in ABLATION_TASKS:
        train_budget = _budget(task, budget, ABLATION_CPU_BUDGET)
        same = train_budget == _budget(task, budget)
        default_name = f"{task}-binary" if same else f"{task}-binary-short"
        default = (("model.binarize", True), *train_budget) if same else train_budget
        runs.append(Run(default_name, f"task={task}", default, (("task", task),)))
        for factor, values in ABLATIONS.items():
            for value in values:
                if value == DEFAULTS[factor]:
                    continue
                runs.append(
                    Run(
                        name=f"{task}-{factor}-{value}",
                        variant=f"task={task}",
                        overrides=((ABLATION_FIELD[factor], value), *train_budget),
                        tags=(("task", task), ("factor", factor), ("value", str(value))),
                    )
                )
    return runs


SWEEPS = {"reproduction": reproduction, "ablations": ablations}


def get_sweep(name: str, budget: str = "cpu") -> list[Run]:
    """The runs of a named sweep."""
    if name not in SWEEPS:
        raise ValueError(f"Unknown sweep {name!r}; valid: {sorted(SWEEPS)}.")
    if budget not in ("cpu", "full"):
        raise ValueError(f"Unknown budget {budget!r}; valid: cpu, full.")
    return SWEEPS[name](budget)
