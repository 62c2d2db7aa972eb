"""Kill test: SIGKILL training at a random step, rerun the same command, get the same bits."""

from __future__ import annotations

import random

import numpy as np
import pytest
import training_runs


@pytest.mark.slow
def test_sigkill_then_rerun_gives_bitwise_equal_parameters(tmp_path_factory, tfds_dir):
    base = tmp_path_factory.getbasetemp() / "training_runs"
    reference = training_runs.reference_run(base, tfds_dir)
    workdir = base / "killed"
    cmd = training_runs.command(workdir, tfds_dir)
    env = training_runs.environment(base / "xla_cache")  # Same programs as the reference.
    kill_step = random.randint(2, training_runs.NUM_TRAIN_STEPS - 2)
    training_runs.kill_after_step(cmd, env, workdir, kill_step, base / "killed.log")
    assert not (workdir / "summary.json").exists()

    checkpoints = workdir / "checkpoints"
    saved = (
        [p.name for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
    )
    rerun = training_runs.run(cmd, env)  # The very same command.
    if saved:  # Killed after a save completed (not during the first one).
        assert f"Resumed from step {max(saved, key=int)}" in rerun.stderr
    expected, got = training_runs.final_params(reference), training_runs.final_params(workdir)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(
            got[name], expected[name], err_msg=f"{name}, kill {kill_step}"
        )
