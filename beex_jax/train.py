"""Trains BEExformer on a GLUE task, evaluating on dev: `train_and_evaluate(config, workdir)`.

Reads top to bottom: mesh, input, model, evaluators, loop; sharding, the update step, checkpoints
and the loop itself are `beex_jax.loop`'s, shared with MLM pretraining (`pretrain.py`). The
same code runs on one CPU, on the devices of one host, and on many hosts (`config.distributed`):
parameters live on a (data, model) mesh, each process feeds its own slice of every batch.

Resuming is automatic: rerunning the same command in the same workdir continues from the latest
checkpoint, with the same parameters, optimizer state, data position and dropout keys, so an
interrupted run ends bitwise equal to an uninterrupted one. `config.init_from` starts a fresh run
from a pretrained workdir's embedding and blocks (and its vocabulary).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from etils import epath

from beex_jax import (
    checkpointing,
    config_fields,
    corruption,
    data,
    evaluate,
    init_from,
    loop,
    losses,
    optim,
    packing,
    sharding,
)
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import BEExformer, ModelConfig, init_params

Params = Any
TRAIN_KEYS = ("input_ids", "segment_ids", "mask", "label", "weight")


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

    return loop.make_update(loss_fn, tx, schedule)


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


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> tuple[loop.TrainState, dict]:
    """Trains, evaluating every epoch and checkpointing; returns the final state and a summary.

    The workdir is locked for the whole run (a second writer is refused). Resuming with another
    config than the workdir's is refused unless `allow_config_change`.
    """
    sharding.initialize_distributed(config)
    config_fields.check_run_config(config)
    workdir = str(checkpointing.absolute(workdir))  # Orbax needs absolute paths.
    with checkpointing.workdir_lock(workdir):
        return _train_and_evaluate(config, workdir, allow_config_change)


def copy_vocab(vocab_file: str, workdir: str) -> str:
    """workdir/vocab.txt, copied from `vocab_file` unless already there (process 0 writes)."""
    path = os.path.join(workdir, init_from.VOCAB_FILE)
    if jax.process_index() == 0 and not os.path.isfile(path):
        fd, tmp = tempfile.mkstemp(dir=workdir, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(vocab_file, tmp)
        os.replace(tmp, path)
    return path


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool
) -> tuple[loop.TrainState, dict]:
    is_main = jax.process_index() == 0

    # ------------------------------------------------------------------------------ mesh
    mesh = sharding.create_mesh(config.mesh.model_parallelism)
    data_size = mesh.shape[sharding.DATA]
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % data_size:
            raise config_fields.ConfigError(
                f"config.{name}={config[name]} must be divisible by the {data_size} "
                f"devices of the mesh's data axis."
            )
    logging.info("Mesh %s over %d processes.", dict(mesh.shape), jax.process_count())

    # ------------------------------------------------------------------------------ input
    # Starting from a pretrained model means using its vocabulary (init_from.apply_to_config).
    config = init_from.apply_to_config(config)
    # The workdir keeps its own copy of the vocabulary (copied at the start), so that the run,
    # its resumes and predict never depend on data.tfds_dir's cached one.
    input_config = config
    workdir_vocab = os.path.join(workdir, init_from.VOCAB_FILE)
    if os.path.isfile(workdir_vocab):
        input_config = config.copy_and_resolve_references()
        with input_config.unlocked():
            input_config.data.vocab_file = workdir_vocab
    input_ = data.create_input(
        input_config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    # The model's vocabulary is the tokenizer's real one (a learned vocabulary can be smaller
    # than asked for). Resolve references first so that config.data keeps what was asked.
    config = config.copy_and_resolve_references()
    config.model.vocab_size = input_.vocab_size
    checkpointing.check_config_matches(config, workdir, allow_change=allow_config_change)
    copy_vocab(
        input_config.data.vocab_file or tokenizer_lib.learned_vocab_path(input_config), workdir
    )
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
        return loop.TrainState(jnp.int32(0), params, tx.init(params), dropout_rng)

    start_params = None
    if config.init_from:  # Pretrained embedding and blocks; exit heads fresh unless asked.
        pretrained = init_from.load_params(config.init_from, config.init_from_step)
        embedding_only = init_from.holds_embedding_only(config.init_from)

        def start_params(fresh):
            return init_from.merge(
                fresh,
                pretrained,
                include_exits=config.init_from_exits,
                embedding_only=embedding_only,
            )

    # ------------------------------------------------------------------------------ evaluators
    eval_step = evaluate.make_eval_step(config, mesh)

    def run_evaluators(params) -> dict[str, dict[str, Any]]:
        inference_params = evaluate.inference_params(config, params)  # Binarized once.
        return {
            split: evaluate.evaluate_split(
                eval_step,
                inference_params,
                input_.eval_batches(split),
                mesh,
                task=config.task,
                num_layers=model_config.num_layers,
            )
            for split in eval_splits
        }

    # ------------------------------------------------------------------------------ loop
    result = loop.run(
        config,
        workdir,
        mesh,
        init=init,
        init_rng=init_rng,
        update=make_update_fn(model, tx, schedule, config, input_.special_token_ids()),
        train_iter=input_.train_iterator(config.seed),
        batch_keys=TRAIN_KEYS,
        num_train_steps=num_train_steps,
        steps_per_epoch=input_.steps_per_epoch,
        eval_every=eval_every,
        evaluate=run_evaluators,
        score=evaluate.score,
        start_params=start_params,
        desc=f"train {config.task}",
    )

    selection = None
    if is_main:  # Over every evaluation of the run, also those before a resume.
        records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
        report = evaluate.selection_report(records, config.task, model_config.num_layers)
        selection = {k: v for k, v in report.items() if k not in ("kept", "final")}
    summary = {
        "step": int(num_train_steps),
        "L": model_config.num_layers,
        "vocab_size": model_config.vocab_size,
        "dev": result.results,
        "best_step": result.best_step,
        "best_score": result.best_score,
        "selection": selection,
        "size": packing.size_report(
            result.state.params, scale=model_config.scale, binarize=model_config.binarize
        ),
    }
    if is_main:
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary, config.task)
    return result.state, summary
