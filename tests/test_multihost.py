"""Two processes on localhost (CPU), each feeding its own half of every batch, train like one."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import training_runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path_factory, tfds_dir):
    base = tmp_path_factory.getbasetemp() / "training_runs"
    reference = training_runs.reference_run(base, tfds_dir)  # Also prepares the data once.
    workdir = base / "two_processes"
    address = f"localhost:{_free_port()}"
    env = training_runs.environment(base / "xla_cache")
    procs = []
    for process_id in range(2):
        cmd = training_runs.command(
            workdir,
            tfds_dir,
            distributed=True,
            coordinator_address=address,
            num_processes=2,
            process_id=process_id,
        )
        log = open(base / f"process_{process_id}.log", "w")  # noqa: SIM115 (closed below)
        procs.append(
            (subprocess.Popen(cmd, cwd=training_runs.REPO, env=env, stdout=log, stderr=log), log)
        )
    for proc, log in procs:
        try:
            proc.wait(timeout=300)
        finally:
            proc.kill()
            log.close()
    for process_id, (proc, _) in enumerate(procs):
        output = (base / f"process_{process_id}.log").read_text()
        assert proc.returncode == 0, f"process {process_id}: {output[-4000:]}"
    assert "Mesh {'data': 2, 'model': 1} over 2 processes" in (base / "process_0.log").read_text()

    # Each process saved its own data-iterator position.
    step = training_runs.NUM_TRAIN_STEPS
    data_dir = workdir / "checkpoints" / str(step) / "data"
    assert sorted(p.name for p in data_dir.glob("process_*")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    training_runs.assert_params_close(
        training_runs.final_params(reference), training_runs.final_params(workdir)
    )
    # Evaluation saw every dev example once, across both processes.
    dev = json.loads((workdir / "summary.json").read_text())["dev"]["validation"]
    assert dev["num_examples"] == 40 and sum(dev["exit_histogram"]) == 40
