"""A workdir's guards and every training failure as one line (issue 12): the lock, the config
record, robust best score, config checks and the command line's error messages."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import training_runs

from beex_jax import checkpointing, config_fields, failures, train
from configs import glue

# ------------------------------------------------------------------------------------- the lock


def _hold_lock(workdir: pathlib.Path) -> subprocess.Popen:
    """Another process holding workdir's lock (as a running training would); waits until held."""
    code = (
        "import sys; from beex_jax import checkpointing\n"
        "with checkpointing.workdir_lock(sys.argv[1]):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir)],
        cwd=training_runs.REPO,
        env={**os.environ, "PYTHONPATH": str(training_runs.REPO), "JAX_PLATFORMS": "cpu"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_and_sigkill_frees_it(tmp_path):
    """Issue 12.13: one run per workdir; the holder's PID in the message; SIGKILL releases."""
    holder = _hold_lock(tmp_path / "run")
    try:
        config = glue.get_config("task=rte,size=tiny")
        with pytest.raises(checkpointing.WorkdirError, match=rf"in use .*\(PID {holder.pid}\)"):
            train.train_and_evaluate(config, str(tmp_path / "run"))
        assert not (tmp_path / "run" / checkpointing.CONFIG_FILE).exists()  # Nothing written.
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with checkpointing.workdir_lock(str(tmp_path / "run")):
        pid = (tmp_path / "run" / checkpointing.LOCK_FILE).read_text().strip()
        assert pid == str(os.getpid())


def test_unwritable_workdir_is_one_clear_error(tmp_path, monkeypatch):
    """A read-only workdir fails at once, naming it (simulated: the tests may run as root)."""
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(checkpointing.LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(checkpointing.WorkdirError, match=r"Cannot write to --workdir.*Read-only"):
        train.train_and_evaluate(glue.get_config("task=rte,size=tiny"), str(tmp_path))


# --------------------------------------------------------------------------------- best score


def test_best_score_skips_a_best_step_whose_metrics_are_missing(tmp_path):
    """Issue 12.13: a best step without metrics on disk (a second writer's doing) crashed
    save_best with `'NoneType' object is not subscriptable`."""
    params = {"w": np.ones((2,), np.float32)}
    ckpt = checkpointing.Checkpoints(str(tmp_path))
    try:
        assert ckpt.save_best(1, params, 0.5)
        ckpt.wait()
        shutil.rmtree(tmp_path / checkpointing.BEST_DIR / "1" / "metrics")
        assert ckpt.best.best_step() == 1  # Still known in memory...
        assert ckpt.best_score() is None  # ...but no readable score: not a crash.
        assert ckpt.save_best(2, params, 0.6)  # Saving goes on.
        ckpt.wait()
        assert ckpt.best_score() == pytest.approx(0.6)
    finally:
        ckpt.close()


# ------------------------------------------------------------------------------ config record


def _saved(tmp_path: pathlib.Path, **changes) -> tuple[str, dict]:
    config = glue.get_config("task=rte,size=tiny").copy_and_resolve_references()
    checkpointing.write_config(config, str(tmp_path))
    for key, value in changes.items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return str(tmp_path), config


def test_changed_config_is_refused_naming_only_the_changed_fields(tmp_path):
    """Issue 12.7: seed / learning rate changed on resume: refused with just those fields."""
    workdir, config = _saved(tmp_path, **{"seed": 3, "optim.learning_rate": 0.002})
    with pytest.raises(checkpointing.CheckpointError) as e:
        checkpointing.check_config_matches(config, workdir)
    message = str(e.value)
    assert "seed: 0 -> 3" in message and "optim.learning_rate: 0.001 -> 0.002" in message
    assert message.count(" -> ") == 1 + 2 and "--allow_config_change" in message  # Legend + 2.
    assert "batch_size" not in message and "hidden_dim" not in message


def test_runtime_fields_may_change(tmp_path):
    workdir, config = _saved(
        tmp_path, **{"data.tfds_dir": "/elsewhere", "log_every_steps": 7, "data.prefetch": 1}
    )
    checkpointing.check_config_matches(config, workdir)


def test_allowed_change_keeps_every_config_in_the_history(tmp_path):
    workdir, config = _saved(tmp_path, seed=3)
    checkpointing.check_config_matches(config, workdir, allow_change=True)
    checkpointing.write_config(config, workdir)
    checkpointing.write_config(config, workdir)  # Unchanged: no new entry.
    history = [
        json.loads(line)
        for line in (tmp_path / checkpointing.HISTORY_FILE).read_text().splitlines()
    ]
    assert [h["config"]["seed"] for h in history] == [0, 3]
    assert json.loads((tmp_path / checkpointing.CONFIG_FILE).read_text())["seed"] == 3


def test_a_workdir_older_than_a_field_resumes_with_its_default(tmp_path):
    workdir, config = _saved(tmp_path)
    path = tmp_path / checkpointing.CONFIG_FILE
    saved = json.loads(path.read_text())
    del saved["model"]["position"]  # Written before model.position existed...
    del saved["optim"]["layer_decay"]  # ... and before optim.layer_decay.
    path.write_text(json.dumps(saved))
    checkpointing.check_config_matches(config, workdir)
    config.optim.layer_decay = 0.8
    with pytest.raises(checkpointing.CheckpointError, match=r"optim.layer_decay: 1.0 -> 0.8"):
        checkpointing.check_config_matches(config, workdir)
    config.model.position = "alibi"
    with pytest.raises(checkpointing.CheckpointError, match="different model"):
        checkpointing.check_config_matches(config, workdir, allow_change=True)


def test_model_change_is_refused_even_when_changes_are_allowed(tmp_path):
    workdir, config = _saved(tmp_path, **{"model.num_heads": 4})
    with pytest.raises(checkpointing.CheckpointError, match="different model"):
        checkpointing.check_config_matches(config, workdir, allow_change=True)


# ------------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "config.batch_size=0 must be > 0"),
        ("batch_size", -8, "config.batch_size=-8 must be > 0"),
        ("eval_batch_size", 0, "config.eval_batch_size=0 must be > 0"),
        ("num_train_steps", -5, r"config.num_train_steps=-5 must be > 0 \(or -1\)"),
        ("num_train_steps", 0, r"config.num_train_steps=0 must be > 0 \(or -1\)"),
        ("num_epochs", 0, "config.num_epochs=0 must be > 0"),
        ("num_epochs", -1, "config.num_epochs=-1 must be > 0"),
        ("log_every_steps", 0, "config.log_every_steps=0 must be > 0"),
    ],
)
def test_impossible_sizes_and_counts_are_config_errors(field, value, message):
    """Issue 12.5: batch_size=0 was a ZeroDivisionError; negative counts ran nonsense."""
    config = glue.get_config("task=rte,size=tiny").unlock()
    config[field] = value
    with pytest.raises(config_fields.ConfigError, match=message):
        config_fields.check_run_config(config)
    with pytest.raises(config_fields.ConfigError, match=message):  # Before any data is read.
        train.train_and_evaluate(config, "/nonexistent/never/created")


def test_batch_larger_than_the_data_is_a_config_error(tmp_path, tfds_dir):
    config = training_runs.tiny_config(tfds_dir, batch_size=128)  # 96 train examples.
    with pytest.raises(config_fields.ConfigError, match="do not fill one batch of 128"):
        train.train_and_evaluate(config, str(tmp_path))


# --------------------------------------------------------------------------- one-line messages


def test_error_messages_of_expected_failures():
    """Issue 12.2: what main prints for each failure that is not a bug; bugs keep tracebacks."""
    nan = FloatingPointError("Non-finite loss at step 1; stopping. No checkpoint was saved yet.")
    assert failures.error_message(nan) == str(nan)
    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/2/x")
    assert failures.error_message(full).startswith(
        "cannot write /w/checkpoints/2/x: No space left on device."
    )
    try:  # Orbax reports a failed background write as its own exception type.
        try:
            raise ValueError('Error writing "x": No space left on device [os_error_code=28]')
        except ValueError as inner:
            raise RuntimeError("Save Finalize thread failed") from inner
    except RuntimeError as e:
        assert "No space left on device" in failures.error_message(e)
    multi = checkpointing.CheckpointError("first\nsecond")
    assert failures.error_message(multi) == "first second"
    assert failures.error_message(TypeError("'NoneType' object is not subscriptable")) is None
    assert failures.error_message(KeyError("x")) is None


def _cli(workdir: pathlib.Path, tfds_dir: pathlib.Path, *extra: str, **overrides) -> list[str]:
    return [*training_runs.command(workdir, tfds_dir, **overrides), *extra]


def _assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("ERROR: ") and expected in lines[-1], lines[-1]


@pytest.mark.slow
def test_training_failures_end_in_one_line(tmp_path, tfds_dir, glue_dir):
    """Issue 12.2: missing GLUE folder, malformed TSV, batch size, config mismatch and a held
    workdir, each a real command: one line, no traceback (an empty GLUE folder takes the missing
    folder's path; an unwritable workdir is tested in process above)."""
    from beex_jax import data

    config = training_runs.tiny_config(tfds_dir)  # RTE and its vocabulary prepared once:
    input_ = data.create_input(config, process_index=0, process_count=1)
    bad = tmp_path / "bad_glue" / "RTE"
    bad.mkdir(parents=True)
    for name in ("dev.tsv", "test.tsv"):
        (bad / name).symlink_to(glue_dir / "RTE" / name)
    lines = (glue_dir / "RTE" / "train.tsv").read_text().splitlines(keepends=True)
    (bad / "train.tsv").write_text("".join([*lines[:3], "7\tonly two fields\n", *lines[4:]]))
    mismatched = tmp_path / "mismatched"
    saved = config.copy_and_resolve_references()
    saved.seed = 5
    saved.model.vocab_size = input_.vocab_size
    checkpointing.write_config(saved, str(mismatched))
    holder = _hold_lock(tmp_path / "held")
    cases = {
        "missing GLUE folder": (
            _cli(tmp_path / "w1", tmp_path / "tfds1", **{"data.glue_dir": tmp_path / "nowhere"}),
            "GLUE task 'rte': missing",
        ),
        "malformed TSV": (
            _cli(
                tmp_path / "w3",
                tmp_path / "tfds_bad",
                **{"data.glue_dir": tmp_path / "bad_glue"},
            ),
            "RTE/train.tsv, line 4: expected 4 tab-separated fields",
        ),
        "batch size zero": (_cli(tmp_path / "w4", tfds_dir, batch_size=0), "batch_size=0"),
        "config mismatch": (_cli(mismatched, tfds_dir), "seed: 5 -> 0"),
        "held workdir": (_cli(tmp_path / "held", tfds_dir), f"(PID {holder.pid})"),
    }
    env = training_runs.environment(tmp_path / "xla")
    try:
        procs = {
            name: subprocess.Popen(
                cmd,
                cwd=training_runs.REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (cmd, _) in cases.items()
        }
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
            _assert_one_line(result, cases[name][1])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.slow
def test_disk_full_during_training_ends_in_one_line(tmp_path, tfds_dir):
    """Issue 12.2: a write refused mid-run (a file size limit stands in for a full disk) ends in
    one line instead of ~1,500 lines of background-thread tracebacks."""
    from beex_jax import data

    data.create_input(training_runs.tiny_config(tfds_dir), process_index=0, process_count=1)
    limit = 20_000  # Bytes: the config and logs fit, the first checkpoint's arrays do not.
    command = training_runs.command(tmp_path / "run", tfds_dir)
    limited = (  # Set in the child itself (no preexec_fn: this process runs JAX threads).
        "import resource, runpy, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A refused write returns EFBIG.\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "sys.argv = ['beex_jax.main', *sys.argv[1:]]\n"
        "runpy.run_module('beex_jax.main', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", limited, *command[3:]],
        cwd=training_runs.REPO,
        # A private compilation cache: entries cut short by the limit must not reach others.
        env=training_runs.environment(tmp_path / "xla_cache"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    _assert_one_line(proc, "cannot write the checkpoint (File too large)")
    assert len(proc.stderr.splitlines()) < 60
