"""Tiny training runs on a slice of real RTE, shared by the training tests (not a test module).

Runs in a subprocess use the real command line (`python -m beex_jax.main`), XLA flags that must be
set before JAX starts (simulated devices, cheaper compilation), and one persistent compilation
cache, so that runs of the same program compile it once per session.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest

from beex_jax import checkpointing
from configs import glue

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN_STEPS = 6
# A few steps of the tiny model on 96 RTE examples cut to 32 tokens (one bucket: one compilation).
TINY_OVERRIDES: dict[str, Any] = {
    "data.vocab_size": 1000,
    "data.max_length": 32,
    "data.bucket_boundaries": (32,),
    "data.max_train_examples": 96,
    "data.max_eval_examples": 40,
    "batch_size": 8,
    "eval_batch_size": 16,
    "num_train_steps": NUM_TRAIN_STEPS,
    "checkpoint_every_steps": 2,
    "eval_every_steps": 3,
    "log_every_steps": 1,
    # Runs on different meshes must agree to 1e-5: float32 whatever the CPU (with bf16 dots,
    # "auto" would pick bf16_f32, whose GEMM kernels, chosen by shape, differ by ~1e-3).
    "model.dtype": "float32",
}


def glue_dir() -> pathlib.Path:
    """$BEEX_GLUE_DIR, else ../shared/data/glue beside the repository; skips the test if absent."""
    path = pathlib.Path(os.environ.get("BEEX_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    if not (path / "RTE" / "train.tsv").is_file():
        pytest.skip(f"No GLUE RTE files under {path} (set BEEX_GLUE_DIR).")
    return path


def tiny_config(tfds_dir: pathlib.Path, **overrides: Any) -> ml_collections.ConfigDict:
    """The tiny RTE config, with `overrides` ({"a.b": value}) on top."""
    config = glue.get_config("task=rte,size=tiny")
    config.data.glue_dir = str(glue_dir())
    config.data.tfds_dir = str(tfds_dir)
    for key, value in {**TINY_OVERRIDES, **overrides}.items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def command(workdir: pathlib.Path, tfds_dir: pathlib.Path, **overrides: Any) -> list[str]:
    """`python -m beex_jax.main ...` for the tiny config."""
    args = [f"--config.{key}={value}" for key, value in {**TINY_OVERRIDES, **overrides}.items()]
    return [
        sys.executable,
        "-m",
        "beex_jax.main",
        "--config=configs/glue.py:task=rte,size=tiny",
        f"--workdir={workdir}",
        f"--config.data.glue_dir={glue_dir()}",
        f"--config.data.tfds_dir={tfds_dir}",
        *args,
    ]


def environment(cache_dir: pathlib.Path, devices: int = 1) -> dict[str, str]:
    """Environment of a subprocess run: `devices` CPU devices, the shared compilation cache."""
    env = dict(os.environ)
    env.update(
        {
            # Compilation dominates these runs; optimisation level 0 cuts it by ~3x.
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
            "--xla_backend_optimization_level=0",
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs a command in the repository root; fails the test with its output if it fails."""
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def kill_after_step(
    cmd: list[str], env: dict[str, str], workdir: pathlib.Path, kill_step: int, log: pathlib.Path
) -> None:
    """Runs `cmd` and SIGKILLs it once workdir/metrics.jsonl records `kill_step`; asserts the
    kill is what ended it (output in `log`)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
        metrics, deadline = workdir / "metrics.jsonl", time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line)["step"] >= kill_step for line in lines if line):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was meant to be killed after step {kill_step} but ended with {proc.returncode}:"
        f" {log.read_text()[-3000:]}"
    )


def reference_run(base: pathlib.Path, tfds_dir: pathlib.Path) -> pathlib.Path:
    """The uninterrupted single-device run, done once per session (kept under `base`)."""
    workdir = base / "reference"
    if not (workdir / "summary.json").exists():
        run(command(workdir, tfds_dir), environment(base / "xla_cache"))
    return workdir


def final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    """The latest checkpoint's parameters as {path: numpy array}."""
    params, _ = checkpointing.restore_params(str(workdir), which="latest")
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(params)}


# The key projection's bias shifts every score of a query by the same amount, which softmax
# ignores: its gradient is exactly 0, so what Adam makes of it is rounding noise, different for
# every partitioning of the sums. It is the one leaf left out of cross-device comparisons.
ZERO_GRADIENT_LEAVES = ("['attention']['key']['bias']",)


def assert_params_close(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """allclose(1e-5) on every leaf but those whose gradient is identically zero."""
    assert expected.keys() == got.keys()
    for name in expected:
        if not name.endswith(ZERO_GRADIENT_LEAVES):
            np.testing.assert_allclose(
                got[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name
            )
