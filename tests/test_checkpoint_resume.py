"""Kill test: SIGKILL training at a random step, rerun the same command, get the same bits."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

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
    with open(base / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=training_runs.REPO, env=env, stdout=log, stderr=log)
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line)["step"] >= kill_step for line in lines if line):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was meant to be killed after step {kill_step} but ended with {proc.returncode}:"
        f" {(base / 'killed.log').read_text()[-3000:]}"
    )
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
