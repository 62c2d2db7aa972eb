"""The training loop shared by GLUE fine-tuning (`train.py`) and MLM pretraining (`pretrain.py`).

Reads top to bottom: sharding, update step, checkpoint, loop. What differs between the two jobs
(the input, the loss, the evaluators, how the best checkpoint is scored) comes in as arguments;
everything a run's robustness depends on lives here once: state created directly sharded from
`jax.eval_shape` plus the partition rules, a jitted update with donated state, Orbax checkpoints
of the state and the grain iterator (exact resume), metrics fetched one step late, JSON lines and
TensorBoard, a progress bar, and a stop on non-finite loss or norms.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax
import tensorboardX
import tqdm
from absl import logging
from etils import epath
from jax.sharding import Mesh

from beex_jax import checkpointing, optim, sharding

Params = Any
LossFn = Callable[[Params, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, Any]]]
Results = dict[str, dict[str, Any]]  # {split: {metric: value}} of one evaluation.


@flax.struct.dataclass
class TrainState:
    """Everything a training step changes; checkpointed as a whole."""

    step: jax.Array  # Updates done so far (int32).
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # Raw uint32 key; step s uses fold_in(rng, s) for dropout and corruption.


def make_update(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule):
    """One optimisation step of `loss_fn`: (state, global batch) -> (new state, metrics)."""

    def update(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(
            metrics,
            loss=loss,
            learning_rate=schedule(state.step),
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            update_norm=optax.tree.norm(updates),
            sign_flip_fraction=optim.sign_flip_fraction(state.params, params),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return update


class MetricWriter:
    """JSON lines (workdir/metrics.jsonl) and TensorBoard scalars; only process 0 writes."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = epath.Path(workdir) / "metrics.jsonl"
        if self.enabled:
            self.jsonl = self.path.open("a")
            self.tb = tensorboardX.SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record; lists (per-exit values) become one TensorBoard scalar per exit."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            for i, v in enumerate(value) if isinstance(value, list) else [(None, value)]:
                if isinstance(v, int | float):
                    self.tb.add_scalar(name if i is None else f"{name}/{i + 1}", v, step)
        self.tb.flush()

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, also by earlier (resumed) runs of the workdir."""
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def close(self) -> None:
        """Closes the files."""
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def to_host(step: int, metrics: dict[str, jax.Array], where: str) -> dict[str, np.ndarray]:
    """Fetches a step's metrics; raises FloatingPointError if training diverged."""
    metrics = jax.device_get(metrics)
    bad = sorted(k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(metrics[k]))
    if bad:
        raise FloatingPointError(
            f"Non-finite {', '.join(bad)} at step {step} "
            f"({ {k: float(metrics[k]) for k in bad} }); stopping. {where}"
        )
    return metrics


def window_mean(window: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Mean of each metric over a logging window (per-exit arrays stay lists)."""
    out = {}
    for key in window[0]:
        value = np.mean(np.stack([m[key] for m in window]), axis=0)
        out[key] = value.tolist() if value.ndim else float(value)
    return out


@dataclasses.dataclass
class LoopResult:
    """What a finished loop hands back."""

    state: TrainState
    results: Results | None  # The last evaluation (None without evaluators).
    best_step: int | None
    best_score: float | None
    metrics_path: epath.Path


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: Mesh,
    *,
    init: Callable[[jax.Array], TrainState],
    init_rng: jax.Array,
    update: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, Any]]],
    train_iter: Iterator[dict[str, np.ndarray]],
    batch_keys: tuple[str, ...],
    num_train_steps: int,
    steps_per_epoch: int,
    eval_every: int,
    evaluate: Callable[[Params], Results] | None = None,
    score: Callable[[Results], float] | None = None,
    start_params: Callable[[Params], Params] | None = None,
    keep_period: int | None = None,
    desc: str = "train",
) -> LoopResult:
    """Trains `num_train_steps` steps from the workdir's latest checkpoint (or from `init`).

    `evaluate` runs every `eval_every` steps and at the end; `score` (if given) keeps the best
    parameters by it in workdir/best. `start_params` replaces the initial parameters of a fresh
    run (e.g. pretrained weights); a resumed run never calls it. `keep_period` keeps every
    checkpoint whose step is a multiple of it, besides the most recent ones.
    """
    is_main = jax.process_index() == 0

    # ------------------------------------------------------------------------------ sharding
    # Shapes first, then the partition rules place every leaf; parameters are created directly
    # where they live, never gathered on one device.
    abstract_state = jax.eval_shape(init, init_rng)
    state_sharding = sharding.tree_shardings(abstract_state, mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    # ------------------------------------------------------------------------------ update step
    update_fn = jax.jit(
        update,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )

    # ------------------------------------------------------------------------------ checkpoint
    ckpt = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints, keep_period=keep_period)
    restored = ckpt.restore(
        jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state,
            state_sharding,
        ),
        train_iter,
    )
    if restored is None:
        state = jax.jit(init, out_shardings=state_sharding)(init_rng)
        if start_params is not None:
            params = jax.device_put(start_params(state.params), state_sharding.params)
            state = state.replace(params=params)
        start_step = 0
    else:
        state, start_step = restored
        logging.info("Resumed from step %d in %s.", start_step, workdir)

    # ------------------------------------------------------------------------------ loop
    writer = MetricWriter(workdir)
    progress = tqdm.tqdm(
        total=num_train_steps,
        initial=start_step,
        disable=not is_main,
        desc=desc,
        dynamic_ncols=True,
    )
    window, pending, results = [], None, None
    window_seconds, window_steps = 0.0, 0  # Training time only: no compilation, eval or saving.

    def where() -> str:
        saved = ckpt.latest_step()
        if saved is None:
            return "No checkpoint was saved yet; nothing to resume from."
        return f"The last good checkpoint (step {saved}) is kept in {workdir}/checkpoints."

    try:
        for step in range(start_step + 1, num_train_steps + 1):
            started = time.perf_counter()
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                local = next(train_iter)
                batch = sharding.global_batch({k: local[k] for k in batch_keys}, mesh)
                state, metrics = update_fn(state, batch)
            # Metrics are fetched one step late, so the host never waits for the device...
            if pending is not None:
                window.append(to_host(*pending, where()))
            pending = (step, metrics)
            is_last = step == num_train_steps
            is_checkpoint = step % config.checkpoint_every_steps == 0 or is_last
            if keep_period:
                is_checkpoint |= step % keep_period == 0
            is_eval = evaluate is not None and (step % eval_every == 0 or is_last)
            is_log = step % config.log_every_steps == 0 or is_last
            # ...except where a step must be known good: before it is logged or saved.
            if is_checkpoint or is_eval or is_log:
                window.append(to_host(*pending, where()))
                pending = None
            if step > start_step + 1:  # The first step compiles.
                window_seconds += time.perf_counter() - started
                window_steps += 1
            if is_log:
                record = window_mean(window)
                if window_steps:
                    record["examples_per_second"] = (
                        window_steps * config.batch_size / window_seconds
                    )
                record["epoch"] = step / steps_per_epoch
                writer.write(step, record)
                progress.set_postfix(
                    loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}"
                )
                window, window_seconds, window_steps = [], 0.0, 0
            if is_checkpoint:
                ckpt.save(step, state, train_iter)
            if is_eval:
                results = evaluate(state.params)
                writer.write(
                    step,
                    {f"{split}/{k}": v for split, res in results.items() for k, v in res.items()},
                )
                if score is not None:
                    ckpt.save_best(step, state.params, score(results))
                logging.info("step %d dev: %s", step, results)
            progress.update(1)
        if results is None and evaluate is not None:  # Resumed after the last step.
            results = evaluate(state.params)
        ckpt.wait()
        best_step = ckpt.best.best_step() if score is not None else None
        best_score = ckpt.best_score() if score is not None else None
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    return LoopResult(state, results, best_step, best_score, writer.path)
