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
# Per-task CPU budget: SST-2 is 18x larger than the next task, so it gets fewer epochs.
CPU_BUDGET = {
    "sst2": {"num_epochs": 2},
    "cola": {"num_epochs": 10},
    "mrpc": {"num_epochs": 10},
    "rte": {"num_epochs": 10},
    "stsb": {"num_epochs": 10},
    "wnli": {"num_epochs": 10},
}
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


def _budget(task: str, budget: str) -> tuple[tuple[str, object], ...]:
    return tuple(CPU_BUDGET[task].items()) if budget == "cpu" else ()


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
    """One factor at a time away from the default, on SST-2 and MRPC (binarized)."""
    runs = []
    for task in ABLATION_TASKS:
        runs.append(
            Run(f"{task}-default", f"task={task}", _budget(task, budget), (("task", task),))
        )
        for factor, values in ABLATIONS.items():
            for value in values:
                if value == DEFAULTS[factor]:
                    continue
                runs.append(
                    Run(
                        name=f"{task}-{factor}-{value}",
                        variant=f"task={task}",
                        overrides=((ABLATION_FIELD[factor], value), *_budget(task, budget)),
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
