"""Trains BEExformer on a GLUE task, evaluating on dev: `train_and_evaluate(config, workdir)`.

Reads top to bottom: mesh, input, model, sharding, update step, checkpoint, evaluators, loop. The
same code runs on one CPU, on the devices of one host, and on many hosts (`config.distributed`):
parameters live on a (data, model) mesh, each process feeds its own slice of every batch.

Resuming is automatic: rerunning the same command in the same workdir continues from the latest
checkpoint, with the same parameters, optimizer state, data position and dropout keys, so an
interrupted run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX
import tqdm
from absl import logging
from etils import epath

from beex_jax import (
    checkpointing,
    corruption,
    data,
    evaluate,
    losses,
    optim,
    packing,
    sharding,
)
from beex_jax.model import BEExformer, ModelConfig, init_params

Params = Any
TRAIN_KEYS = ("input_ids", "segment_ids", "mask", "label", "weight")


@flax.struct.dataclass
class TrainState:
    """Everything a training step changes; checkpointed as a whole."""

    step: jax.Array  # Updates done so far (int32).
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # Raw uint32 key; step s uses fold_in(rng, s) for dropout.


def make_update_fn(
    model: BEExformer,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    token_ids: Mapping[str, int],
):
    """One optimisation step: (state, global batch) -> (new state, metrics).

    `token_ids` maps the special tokens ([UNK], [CLS], [SEP], [PAD]) to the tokenizer's ids.
    """
    special_ids = tuple(token_ids[t] for t in ("[CLS]", "[SEP]", "[PAD]"))

    def loss_fn(params, batch, rng):
        input_ids = corruption.word_dropout(
            jax.random.fold_in(rng, 1),  # The dropout layers keep `rng` itself.
            batch["input_ids"],
            batch["mask"],
            rate=config.data.word_dropout,
            unk_id=token_ids["[UNK]"],
            special_ids=special_ids,
        )
        all_logits = model.apply(
            {"params": params},
            input_ids,
            batch["segment_ids"],
            batch["mask"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return losses.exit_loss(
            all_logits,
            batch["label"],
            batch["weight"],
            name=config.loss.name,
            delta=config.exit.delta,
            tau=config.loss.tau,
            lam=config.loss.lam,
            num_classes=config.model.num_classes,
            detach_routing=config.loss.detach_routing,
            label_smoothing=config.loss.label_smoothing,
        )

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

    def close(self) -> None:
        """Closes the files."""
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _to_host(step: int, metrics: dict[str, jax.Array], where: str) -> dict[str, np.ndarray]:
    """Fetches a step's metrics; raises FloatingPointError if training diverged."""
    metrics = jax.device_get(metrics)
    bad = sorted(k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(metrics[k]))
    if bad:
        raise FloatingPointError(
            f"Non-finite {', '.join(bad)} at step {step} "
            f"({ {k: float(metrics[k]) for k in bad} }); stopping. {where}"
        )
    return metrics


def _mean(window: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Mean of each metric over a logging window (per-exit arrays stay lists)."""
    out = {}
    for key in window[0]:
        value = np.mean(np.stack([m[key] for m in window]), axis=0)
        out[key] = value.tolist() if value.ndim else float(value)
    return out


def _print_summary(summary: dict[str, Any], task: str) -> None:
    size = summary["size"]
    print(
        f"\n=== {task}: step {summary['step']}, best dev GLUE score {summary['best_score']} "
        f"(early exit, step {summary['best_step']}) ==="
    )
    if summary["selection"]:
        sel = summary["selection"]
        print(
            f"kept (step {sel['kept_step']}): early exit {sel['early_exit']:.4f}, last exit "
            f"{sel['last_exit']:.4f}; last exit at its own best (step "
            f"{sel['last_exit_best_step']}): {sel['last_exit_best']:.4f}"
        )
    for split, res in summary["dev"].items():
        full = {k: round(v, 4) for k, v in res.items() if k.startswith(f"exit_{summary['L']}/")}
        early = {k: round(v, 4) for k, v in res.items() if k.startswith("early_exit/")}
        print(f"{split}: full depth {full} | early exit {early}")
        print(
            f"  mean exit block {res['mean_exit_block']:.2f} of {summary['L']}, FLOPs saved "
            f"{100 * res['flops_saved']:.1f}%, exit histogram {res['exit_histogram']}"
        )
    print(
        f"size: {size['packed_bytes'] / 2**20:.2f} MiB packed vs "
        f"{size['float32_bytes'] / 2**20:.2f} MiB float32: {size['ratio']:.2f}x smaller "
        f"(vocabulary {summary['vocab_size']})"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, dict]:
    """Trains, evaluating every epoch and checkpointing; returns the final state and a summary."""
    sharding.initialize_distributed(config)
    workdir = str(checkpointing.absolute(workdir))  # Orbax needs absolute paths.
    is_main = jax.process_index() == 0

    # ------------------------------------------------------------------------------ mesh
    mesh = sharding.create_mesh(config.mesh.model_parallelism)
    data_size = mesh.shape[sharding.DATA]
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % data_size:
            raise ValueError(
                f"config.{name}={config[name]} must be divisible by the {data_size} "
                f"devices of the mesh's data axis."
            )
    logging.info("Mesh %s over %d processes.", dict(mesh.shape), jax.process_count())

    # ------------------------------------------------------------------------------ input
    input_ = data.create_input(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    # The model's vocabulary is the tokenizer's real one (a learned vocabulary can be smaller
    # than asked for). Resolve references first so that config.data keeps what was asked.
    config = config.copy_and_resolve_references()
    config.model.vocab_size = input_.vocab_size
    checkpointing.check_config_matches(config, workdir)
    checkpointing.write_config(config, workdir)
    if config.num_train_steps > 0:
        num_train_steps = config.num_train_steps
    else:
        num_train_steps = config.num_epochs * input_.steps_per_epoch
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else input_.steps_per_epoch
    eval_splits = data.eval_split_names(config.task)
    logging.info(
        "%d train examples, %d steps per epoch, %d steps.",
        input_.num_train_examples,
        input_.steps_per_epoch,
        num_train_steps,
    )

    # ------------------------------------------------------------------------------ model
    model_config = ModelConfig.from_config(config.model)
    model = BEExformer(model_config)
    tx, schedule = optim.create_optimizer(config, num_train_steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    def init(rng):
        params = init_params(model_config, rng)
        return TrainState(jnp.int32(0), params, tx.init(params), dropout_rng)

    # ------------------------------------------------------------------------------ sharding
    # Shapes first, then the partition rules place every leaf; parameters are created directly
    # where they live, never gathered on one device.
    abstract_state = jax.eval_shape(init, init_rng)
    state_sharding = sharding.tree_shardings(abstract_state, mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    # ------------------------------------------------------------------------------ update step
    update_fn = jax.jit(
        make_update_fn(model, tx, schedule, config, input_.special_token_ids()),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )

    # ------------------------------------------------------------------------------ checkpoint
    ckpt = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    train_iter = input_.train_iterator(config.seed)
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
        start_step = 0
    else:
        state, start_step = restored
        logging.info("Resumed from step %d in %s.", start_step, workdir)

    # ------------------------------------------------------------------------------ evaluators
    eval_step = evaluate.make_eval_step(config, mesh)

    def run_evaluators(params) -> dict[str, dict[str, Any]]:
        return {
            split: evaluate.evaluate_split(
                eval_step,
                params,
                input_.eval_batches(split),
                mesh,
                task=config.task,
                num_layers=model_config.num_layers,
            )
            for split in eval_splits
        }

    # ------------------------------------------------------------------------------ loop
    writer = MetricWriter(workdir)
    progress = tqdm.tqdm(
        total=num_train_steps,
        initial=start_step,
        disable=not is_main,
        desc=f"train {config.task}",
        dynamic_ncols=True,
    )
    where = f"The last good checkpoint is kept in {workdir}/{checkpointing.LATEST_DIR}."
    window, pending, results = [], None, None
    window_seconds, window_steps = 0.0, 0  # Training time only: no compilation, eval or saving.
    try:
        for step in range(start_step + 1, num_train_steps + 1):
            started = time.perf_counter()
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                local = next(train_iter)
                batch = sharding.global_batch({k: local[k] for k in TRAIN_KEYS}, mesh)
                state, metrics = update_fn(state, batch)
            # Metrics are fetched one step late, so the host never waits for the device...
            if pending is not None:
                window.append(_to_host(*pending, where))
            pending = (step, metrics)
            is_last = step == num_train_steps
            is_checkpoint = step % config.checkpoint_every_steps == 0 or is_last
            is_eval = step % eval_every == 0 or is_last
            is_log = step % config.log_every_steps == 0 or is_last
            # ...except where a step must be known good: before it is logged or saved.
            if is_checkpoint or is_eval or is_log:
                window.append(_to_host(*pending, where))
                pending = None
            if step > start_step + 1:  # The first step compiles.
                window_seconds += time.perf_counter() - started
                window_steps += 1
            if is_log:
                record = _mean(window)
                if window_steps:
                    record["examples_per_second"] = (
                        window_steps * config.batch_size / window_seconds
                    )
                record["epoch"] = step / input_.steps_per_epoch
                writer.write(step, record)
                progress.set_postfix(
                    loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}"
                )
                window, window_seconds, window_steps = [], 0.0, 0
            if is_checkpoint:
                ckpt.save(step, state, train_iter)
            if is_eval:
                results = run_evaluators(state.params)
                writer.write(
                    step,
                    {f"{split}/{k}": v for split, res in results.items() for k, v in res.items()},
                )
                ckpt.save_best(step, state.params, evaluate.score(results))
                logging.info("step %d dev: %s", step, results)
            progress.update(1)
        if results is None:  # Resumed after the last step: evaluate what was restored.
            results = run_evaluators(state.params)
        ckpt.wait()
        best_step, best_score = ckpt.best.best_step(), ckpt.best_score()
    finally:
        progress.close()
        writer.close()
        ckpt.close()

    selection = None
    if is_main:  # Over every evaluation of the run, also those before a resume.
        records = [json.loads(line) for line in writer.path.read_text().splitlines()]
        report = evaluate.selection_report(records, config.task, model_config.num_layers)
        selection = {k: v for k, v in report.items() if k not in ("kept", "final")}
    summary = {
        "step": int(num_train_steps),
        "L": model_config.num_layers,
        "vocab_size": model_config.vocab_size,
        "dev": results,
        "best_step": best_step,
        "best_score": best_score,
        "selection": selection,
        "size": packing.size_report(
            state.params, scale=model_config.scale, binarize=model_config.binarize
        ),
    }
    if is_main:
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary, config.task)
    return state, summary
