"""Orbax checkpoints: the latest training state for resuming, the best parameters by dev metric.

A workdir holds:
  config.json    the resolved config of the run (vocab size included): enough to rebuild the model.
  config_history.jsonl  every config the run has used, with the step it started from (a resume
                 with another config must be asked for: `allow_change`).
  vocab.txt      the vocabulary the model reads (`beex_jax.train` copies it there).
  .lock          held (flock) by the training process writing the workdir; names its PID.
  checkpoints/   the K most recent steps: `state` (params, optimizer state, step, RNG) and `data`
                 (each process's grain iterator state: a resumed run gets exactly the next batch).
  best/          the parameters with the best dev metric so far (one step, score in its metrics).

Saving is asynchronous: arrays are copied off the devices, then written by a background thread
while training goes on. Orbax writes each step into a temporary folder and renames it when
complete, so a run killed mid-save resumes from the previous complete step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from beex_jax import model as model_lib

PyTree = Any
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = ".lock"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
# Config sections that decide the shapes and meaning of the parameters.
_MODEL_KEYS = ("task", "model")
# Fields a resumed run may change freely: where files are and how the run is laid out or logged,
# nothing that changes what it computes.
RUNTIME_FIELDS = (
    "data.glue_dir",
    "data.manual_dir",
    "data.tfds_dir",
    "data.prefetch",
    "mesh.model_parallelism",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, incomplete, or from a different model."""


class WorkdirError(RuntimeError):
    """A workdir this run cannot use: another run holds it, or it is not writable."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Holds an exclusive `flock` on workdir/.lock while training (process 0; local paths).

    A second writer is refused at once with the PID of the holder. The kernel drops the lock when
    the holder exits in any way, SIGKILL included, so a stale .lock file blocks nobody.
    """
    if jax.process_index() != 0 or "://" in str(workdir):
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(
            f"Cannot write to --workdir {workdir} ({e.strerror}: {e.filename}); use a folder "
            f"this user can write."
        ) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise WorkdirError(
                f"{workdir} is in use by another training run (PID {holder}); wait for it to "
                f"end or stop it, or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # Releases the lock.


def absolute(workdir: str | os.PathLike) -> epath.Path:
    """`workdir` as an absolute path, which Orbax needs; URLs (gs://...) are kept as they are."""
    if "://" in str(workdir):
        return epath.Path(workdir)
    return epath.Path(os.path.abspath(os.path.expanduser(workdir)))


def latest_saved_step(workdir: str) -> int:
    """Step of the newest complete training checkpoint folder in workdir (0 if none)."""
    directory = epath.Path(workdir) / LATEST_DIR
    steps = (
        [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []
    )
    return max(steps, default=0)


def _history_entry(config: Any, workdir: str) -> str:
    entry = {"start_step": latest_saved_step(workdir), "time": time.time(), "config": config}
    return json.dumps(entry, sort_keys=True) + "\n"


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to workdir/config.json (process 0 only).

    A config that differs from the one before it is also appended to config_history.jsonl, so
    the history holds every config the run has used.
    """
    if jax.process_index() == 0:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        current = json.loads(config.to_json_best_effort())
        history = path / HISTORY_FILE
        previous = path / CONFIG_FILE
        if not history.exists() and previous.exists():  # A workdir from before the history.
            history.write_text(_history_entry(json.loads(previous.read_text()), workdir))
        lines = history.read_text().splitlines() if history.exists() else []
        if not lines or json.loads(lines[-1])["config"] != current:
            with history.open("a") as f:
                f.write(_history_entry(current, workdir))
        # Written whole, then renamed: other processes may read it (check_config_matches) now.
        tmp = path / f"{CONFIG_FILE}.tmp"
        tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
        tmp.replace(path / CONFIG_FILE)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (from its config.json)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: {workdir} is not a training workdir.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved -> current` for every field that differs, runtime fields left out."""
    old, new = _flatten(saved), _flatten(current)
    missing = "(absent)"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(old.keys() | new.keys())
        if key not in RUNTIME_FIELDS and old.get(key, missing) != new.get(key, missing)
    ]


def with_added_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with fields added after it was written set to their defaults (a workdir written
    before `model.position` or `optim.layer_decay` existed ran what is now its default)."""
    model_defaults = {
        field.name: field.default
        for field in dataclasses.fields(model_lib.ModelConfig)
        if field.name in ADDED_MODEL_FIELDS
    }
    config = dict(config)
    sections = (
        ("model", model_defaults),
        ("optim", ADDED_OPTIM_FIELDS),
        ("exit", ADDED_EXIT_FIELDS),
    )
    for section, defaults in sections:
        if isinstance(config.get(section), Mapping):
            config[section] = {**defaults, **config[section]}
    data = config.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("text_files"), list):
        # Written when data.text_files was a tuple of paths; it is now one comma-separated string.
        config["data"] = {**data, "text_files": ",".join(data["text_files"])}
    return config


# Fields younger than some workdirs; their defaults are what those workdirs ran.
ADDED_MODEL_FIELDS = ("position", "remat")  # remat changes no number, only the speed.
ADDED_OPTIM_FIELDS = {"layer_decay": 1.0, "embedding_lr_scale": 1.0}
# Runs before exit.tail_split computed whole chunks only; the predictions are the same.
ADDED_EXIT_FIELDS = {"tail_split": 4}


def check_config_matches(
    config: ml_collections.ConfigDict, workdir: str, *, allow_change: bool = False
) -> None:
    """Raises CheckpointError if workdir holds a run of another model, or of another config.

    A different task or model is always refused. Any other difference (seed, batch size,
    learning rate, data options, ...) is refused unless `allow_change`; the message names only
    the differing fields. Runtime fields (`RUNTIME_FIELDS`: paths, mesh, logging) may change.
    """
    if not (epath.Path(workdir) / CONFIG_FILE).exists():
        return
    saved = with_added_defaults(read_config(workdir).to_dict())
    current = json.loads(config.to_json_best_effort())
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {current.get(key)!r}"
        for key in _MODEL_KEYS
        if saved.get(key) != current.get(key)
    ]
    if diffs:
        raise CheckpointError(
            f"{workdir} holds a run with a different model; resuming it would mix them. "
            f"Use a new --workdir, or the original config. Differences: {'; '.join(diffs)}"
        )
    changed = config_differences(saved, current)
    if changed and not allow_change:
        raise CheckpointError(
            f"{workdir} holds a run with another config; resuming it with this one would mix "
            f"two runs. Changed (checkpoint -> now): {'; '.join(changed)}. Rerun with the "
            f"original values, use a new --workdir, or pass --allow_config_change to resume "
            f"with the new ones ({HISTORY_FILE} keeps every config the run used)."
        )


def _manager(directory: epath.Path, options: ocp.CheckpointManagerOptions, handlers: dict):
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


@dataclasses.dataclass
class Checkpoints:
    """The two Orbax managers of a workdir: latest training states and best parameters."""

    workdir: str
    keep: int = 2
    keep_period: int | None = None  # Also keep every step that is a multiple of this.

    def __post_init__(self):
        root = absolute(self.workdir)
        self.latest = _manager(
            root / LATEST_DIR,
            ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, keep_period=self.keep_period, cleanup_tmp_directories=True
            ),
            {
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )
        self.best = _manager(
            root / BEST_DIR,
            ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["score"], cleanup_tmp_directories=True
            ),
            {"params": ocp.StandardCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        """Step of the most recent complete training checkpoint, or None."""
        return self.latest.latest_step()

    def save(self, step: int, state: PyTree, data_iterator: Any) -> None:
        """Starts saving the training state and the data iterator position at `step`."""
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
        )

    def restore(self, abstract_state: PyTree, data_iterator: Any) -> tuple[PyTree, int] | None:
        """(state, step) of the latest checkpoint, placed like `abstract_state`; None if none.

        `data_iterator` is moved to the saved position in place.
        """
        step = self.latest.latest_step()
        if step is None:
            return None
        try:
            restored = self.latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )
        except Exception as e:  # Orbax raises many types; all mean the same thing here.
            raise CheckpointError(
                f"Cannot restore step {step} from {self.latest.directory}: it is corrupt or was "
                f"written by a different model/optimizer. Delete that step folder to resume from "
                f"an earlier one, or use a new --workdir. ({type(e).__name__}: {e})"
            ) from e
        return restored["state"], step

    def best_score(self) -> float | None:
        """The dev score of the best checkpoint so far, or None.

        A step whose metrics are missing on disk (another writer removed them, or a save was
        cut short) is skipped: the best score is the highest one still readable.
        """
        if self.best.best_step() is None:
            return None
        scores = []
        for step in self.best.all_steps():
            metrics = self.best.metrics(step)
            if isinstance(metrics, Mapping) and metrics.get("score") is not None:
                scores.append(float(metrics["score"]))
        return max(scores, default=None)

    def save_best(self, step: int, params: PyTree, score: float) -> bool:
        """Saves `params` as the best if `score` beats the best so far; True if it did."""
        best = self.best_score()
        if (best is not None and score <= best) or step in self.best.all_steps():
            return False
        self.best.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
            metrics={"score": float(score)},
        )
        return True

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the managers."""
        self.latest.close()
        self.best.close()


def abstract_params(config: ml_collections.ConfigDict) -> PyTree:
    """Shapes and dtypes of the model's parameters for `config` (nothing is computed)."""
    model_config = model_lib.ModelConfig.from_config(config.model)
    return jax.eval_shape(lambda: model_lib.init_params(model_config, jax.random.PRNGKey(0)))


def restore_params(
    workdir: str, which: str = "best", sharding: jax.sharding.Sharding | None = None
) -> tuple[PyTree, ml_collections.ConfigDict]:
    """(params, config) of a trained model: its best (by dev metric) or latest checkpoint.

    Parameters are placed on `sharding` (default: the first local device).
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', not {which!r}.")
    config = read_config(workdir)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_params(config),
    )
    directory = absolute(workdir) / (BEST_DIR if which == "best" else LATEST_DIR)
    if not directory.exists():
        raise CheckpointError(f"No checkpoint folder {directory}.")
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False)
    ) as manager:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {directory}.")
        if which == "best":
            args = ocp.args.Composite(params=ocp.args.StandardRestore(target))
        else:  # Only the params out of the full training state.
            args = ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item={"params": target},
                    restore_args=jax.tree.map(
                        lambda _: ocp.ArrayRestoreArgs(sharding=sharding), {"params": target}
                    ),
                    partial_restore=True,
                )
            )
        try:
            restored = manager.restore(step, args=args)
        except Exception as e:
            raise CheckpointError(
                f"Cannot restore the parameters of step {step} from {directory} with the model of "
                f"{workdir}/{CONFIG_FILE}: the checkpoint is corrupt or does not match it. "
                f"({type(e).__name__}: {e})"
            ) from e
    params = restored["params"] if which == "best" else restored["state"]["params"]
    return params, config
