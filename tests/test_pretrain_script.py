"""experiments/sweeps/pretrain.py: stage commands carry probe overrides, which must be config
fields.

Each check runs in its own interpreter: the script's absl flags share names with other
experiment scripts' flags (--root, --results), which cannot be defined twice in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def stage_commands(*argv: str) -> subprocess.CompletedProcess:
    """Runs the script's flag parsing and prints every stage's command as JSON."""
    code = (
        "import json, sys; from absl import flags; from experiments.sweeps import pretrain; "
        "flags.FLAGS(['pretrain.py', *sys.argv[1:]]); "
        "print(json.dumps([pretrain.stage_command(n, o) for n, o in pretrain.STAGES]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True
    )


def test_probe_overrides_reach_every_stage_command() -> None:
    result = stage_commands(
        "--root=runs/probe", "--overrides=optim.learning_rate=3e-3,mlm.every_exit=True"
    )
    assert result.returncode == 0, result.stderr
    commands = json.loads(result.stdout)
    assert len(commands) == 2
    for command, name in zip(commands, ("pretrain-float", "pretrain"), strict=True):
        assert command[-2:] == ["--config.optim.learning_rate=3e-3", "--config.mlm.every_exit=True"]
        assert f"--workdir=runs/probe/{name}" in command


@pytest.mark.parametrize("item", ["optim.learnin_rate=1", "optim.learning_rate"])
def test_a_probe_override_that_is_no_config_field_is_refused(item: str) -> None:
    result = stage_commands(f"--overrides={item}")
    assert result.returncode != 0
    assert "--overrides" in result.stderr.splitlines()[-1]


def test_the_record_names_the_command_that_wrote_it() -> None:
    code = (
        "from absl import flags; from experiments.sweeps import pretrain; import sys; "
        "flags.FLAGS(['pretrain.py', *sys.argv[1:]]); print(pretrain.script_command())"
    )
    argv = ["--root=runs/long", "--steps=5000", "--stages=pretrain-float", "--record=long"]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python experiments/sweeps/pretrain.py " + " ".join(argv)
