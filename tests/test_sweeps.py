"""The experiment sweeps name unique runs whose overrides are valid config fields."""

from __future__ import annotations

import pytest

from configs import glue, sweeps


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
@pytest.mark.parametrize("budget", ["cpu", "full"])
def test_sweep_runs_are_unique_and_apply_to_their_config(name: str, budget: str) -> None:
    runs = sweeps.get_sweep(name, budget)
    assert len({r.name for r in runs}) == len(runs)
    for run in runs:
        config = glue.get_config(run.variant.split(":")[-1]).unlock()
        for key, value in run.overrides:
            node = config
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node[parent]
            assert leaf in node, f"{run.name}: unknown config field {key}"
            node[leaf] = value


def test_runs_shared_between_sweeps_have_the_same_training() -> None:
    by_name: dict[str, sweeps.Run] = {}
    for name in sweeps.SWEEPS:
        for run in sweeps.get_sweep(name):
            if run.name in by_name:
                assert dict(by_name[run.name].overrides) == dict(run.overrides), run.name
            by_name[run.name] = run


def test_unknown_sweep_or_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown sweep"):
        sweeps.get_sweep("nope")
    with pytest.raises(ValueError, match="Unknown budget"):
        sweeps.get_sweep("reproduction", "huge")
