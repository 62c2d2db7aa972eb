"""Self-supervised MLM pretraining of the BEExformer body: `pretrain(config, workdir)`.

Reads top to bottom: mesh, corpus and vocabulary, model, evaluator, loop (`beex_jax.loop`, the
same loop as GLUE training: sharded state, Orbax checkpoints with exact resume, metrics, NaN stop).
Binarization-aware from the first step when `config.model.binarize` (the same surrogate and
scales as fine-tuning); or full precision, as a first stage whose weights then initialise a
binarized stage (`config.init_from` of this very job) or a GLUE run.

The workdir ends up holding what fine-tuning needs (`--config.init_from=WORKDIR`): config.json,
vocab.txt (the vocabulary, learned from the corpus unless `data.vocab_file` is given) and the
checkpoints (every `keep_period` steps as well as the latest, to fine-tune from several points
of one run).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from beex_jax import (
    checkpointing,
    config_fields,
    corruption,
    electra,
    init_from,
    loop,
    mlm,
    optim,
    sharding,
    word_vectors,
)
from beex_jax.data import corpus
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import ModelConfig

BATCH_KEYS = ("input_ids", "segment_ids", "mask")
Params = Any
HELDOUT_SEED = 20241206  # Fixed masking of the held-out rows: every evaluation sees the same.


def prepare_vocab(config: ml_collections.ConfigDict, workdir: str, texts: list[str]) -> str:
    """workdir/vocab.txt: kept if there (a resumed run), else copied or learned; its path."""
    path = os.path.join(workdir, init_from.VOCAB_FILE)
    if not os.path.exists(path) and jax.process_index() == 0:
        if config.data.vocab_file:
            tokens = epath.Path(config.data.vocab_file).read_text(encoding="utf-8").splitlines()
        else:
            tokens = tokenizer_lib.learn_vocab(
                texts, int(config.data.vocab_size), int(config.data.vocab_min_frequency)
            )
        fd, tmp = tempfile.mkstemp(dir=workdir, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{token}\n" for token in tokens))
        os.replace(tmp, path)
    sharding.sync_processes("vocab")
    tokenizer = tokenizer_lib.tokenizer_from_vocab(path)
    if tokenizer.token_to_id("[MASK]") is None:
        raise ValueError(f"The vocabulary {path} has no [MASK] token, which MLM needs.")
    return path


OBJECTIVES = ("mlm", "electra", "word_vectors")


def create_model(config: ml_collections.ConfigDict) -> tuple[Any, Callable[..., Params]]:
    """The pretraining model of `config.objective` and its `init(rng, length)` -> params."""
    model_config = ModelConfig.from_config(config.model)
    every_exit = bool(config.mlm.every_exit)
    if config.objective == "mlm":
        model = mlm.MaskedLM(model_config, every_exit=every_exit)
        return model, functools.partial(mlm.init_params, model_config, every_exit=every_exit)
    if config.objective == "electra":
        generator_layers = int(config.electra.generator_layers)
        model = electra.Electra(
            model_config,
            generator_layers=generator_layers,
            temperature=float(config.electra.temperature),
            every_exit=every_exit,
        )
        init = functools.partial(
            electra.init_params,
            model_config,
            generator_layers=generator_layers,
            every_exit=every_exit,
        )
        return model, init
    raise config_fields.ConfigError(
        f"Unknown config.objective={config.objective!r}; valid: {', '.join(OBJECTIVES)}."
    )


def make_loss_fn(model: Any, config: ml_collections.ConfigDict, token_ids: dict):
    """(params, batch, rng) -> (loss, metrics), masking the batch with the step's key: the MLM
    loss, or with ELECTRA the generator's MLM loss + `rtd_weight` x the discriminator's."""
    num_predictions = corruption.num_predictions(config.data.max_length, config.mlm.mask_rate)
    special_ids = tuple(token_ids[t] for t in tokenizer_lib.SPECIAL_TOKENS if t in token_ids)

    def corrupt(rng, batch):
        return corruption.bert_mask(
            rng,
            batch["input_ids"],
            batch["mask"],
            num_predictions=num_predictions,
            mask_id=token_ids["[MASK]"],
            special_ids=special_ids,
            vocab_size=config.model.vocab_size,
            mask_token_rate=config.mlm.mask_token_rate,
            random_token_rate=config.mlm.random_token_rate,
        )

    def loss_fn(params, batch, rng, *, deterministic=False):
        masked = corrupt(jax.random.fold_in(rng, 1), batch)  # Dropout keeps `rng` itself.
        rngs = {"sample": jax.random.fold_in(rng, 2)}  # ELECTRA's generator samples.
        if not deterministic:
            rngs["dropout"] = rng
        outputs = model.apply(
            {"params": params},
            masked["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            masked["positions"],
            deterministic=deterministic,
            rngs=rngs,
        )
        if config.objective == "mlm":
            return mlm.mlm_loss(outputs, masked["targets"], masked["weights"])
        generator_logits, sampled, rtd_logits = outputs
        generator_loss, metrics = mlm.mlm_loss(
            generator_logits, masked["targets"], masked["weights"]
        )
        targets = electra.rtd_targets(sampled, batch["input_ids"])
        discriminator_loss, rtd_metrics = electra.rtd_loss(rtd_logits, targets, batch["mask"])
        loss = generator_loss + config.electra.rtd_weight * discriminator_loss
        return loss, {**metrics, **rtd_metrics}

    return loss_fn


def pretrain(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> tuple[loop.TrainState | None, dict]:
    """Pretrains the body on the configured corpus (`config.objective`: MLM, ELECTRA, or word
    vectors for the embedding alone); returns the state (None for word vectors) and a summary.

    The workdir is locked for the whole run; resuming with another config than the workdir's is
    refused unless `allow_config_change`.
    """
    sharding.initialize_distributed(config)
    config_fields.check_run_config(config)
    workdir = str(checkpointing.absolute(workdir))
    with checkpointing.workdir_lock(workdir):
        return _pretrain(config, workdir, allow_config_change)


def _pretrain(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool
) -> tuple[loop.TrainState | None, dict]:
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    started = time.time()

    # ------------------------------------------------------------------------------ mesh
    mesh = sharding.create_mesh(config.mesh.model_parallelism)
    if config.batch_size % mesh.shape[sharding.DATA]:
        raise config_fields.ConfigError(
            f"config.batch_size={config.batch_size} must be divisible by the "
            f"{mesh.shape[sharding.DATA]} devices of the mesh's data axis."
        )

    # ------------------------------------------------------------------------------ corpus
    config = init_from.apply_to_config(config)  # A second stage uses the first's vocabulary.
    units = corpus.collect_units(config)
    vocab = prepare_vocab(config, workdir, corpus.unit_texts(units))
    if config.objective == "word_vectors":  # The embedding alone: no packing, no loop.
        summary = word_vectors.train_word_vectors(
            config, workdir, units, vocab, allow_config_change=allow_config_change
        )
        return None, summary
    tokenizer = tokenizer_lib.tokenizer_from_vocab(vocab)
    input_ = corpus.create_input(
        config,
        tokenizer,
        units,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    config = config.copy_and_resolve_references()
    config.model.vocab_size = input_.vocab_size
    checkpointing.check_config_matches(config, workdir, allow_change=allow_config_change)
    checkpointing.write_config(config, workdir)
    if config.num_train_steps > 0:
        num_train_steps = config.num_train_steps
    else:
        num_train_steps = config.num_epochs * input_.steps_per_epoch

    # ------------------------------------------------------------------------------ model
    model, init_model = create_model(config)
    tx, schedule = optim.create_optimizer(config, num_train_steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    length = int(config.data.max_length)

    # The output bias starts at the corpus's log word frequencies: Adam moves a bias by about
    # the learning rate per step, so learning them from zero would take thousands of steps.
    prior = None
    if config.mlm.frequency_bias:
        special_ids = list(input_.special_token_ids().values())
        prior = corpus.log_unigram_prior(input_.train, input_.vocab_size, special_ids)

    def init(rng):
        params = init_model(rng, length)
        if prior is not None:
            head = "mlm_head" if config.objective == "mlm" else "generator_head"
            params = mlm.with_output_bias(params, prior, head)
        return loop.TrainState(jnp.int32(0), params, tx.init(params), dropout_rng)

    start_params = None
    if config.init_from:
        pretrained = init_from.load_params(config.init_from, config.init_from_step)
        embedding_only = init_from.holds_embedding_only(config.init_from)

        def start_params(fresh):
            return init_from.merge(fresh, pretrained, embedding_only=embedding_only)

    loss_fn = make_loss_fn(model, config, input_.special_token_ids())

    # ------------------------------------------------------------------------------ evaluator
    heldout = input_.heldout_batches(config.eval_batch_size)

    @jax.jit
    def heldout_step(params, batch, index):
        rng = jax.random.fold_in(jax.random.PRNGKey(HELDOUT_SEED), index)
        _, metrics = loss_fn(params, batch, rng, deterministic=True)
        return metrics

    def evaluate(params) -> loop.Results:
        if not heldout:
            return {}
        per_batch = [
            jax.device_get(heldout_step(params, sharding.global_batch(batch, mesh), i))
            for i, batch in enumerate(heldout)
        ]
        out: dict[str, Any] = {}
        for prefix, count_key in (("mlm", "mlm_predictions"), ("rtd", "rtd_tokens")):
            if count_key not in per_batch[0]:
                continue
            counts = np.array([m[count_key] for m in per_batch])
            out[count_key] = int(counts.sum())
            for key in (f"{prefix}_loss_per_exit", f"{prefix}_accuracy_per_exit"):
                value = np.average([m[key] for m in per_batch], axis=0, weights=counts)
                out[key] = value.tolist()
                out[key.replace("_per_exit", "")] = float(value[-1])  # The last block's.
            if prefix == "rtd":
                fractions = [m["replaced_fraction"] for m in per_batch]
                out["replaced_fraction"] = float(np.average(fractions, weights=counts))
        return {"heldout": out}

    # ------------------------------------------------------------------------------ loop
    result = loop.run(
        config,
        workdir,
        mesh,
        init=init,
        init_rng=init_rng,
        update=loop.make_update(loss_fn, tx, schedule),
        train_iter=input_.train_iterator(config.seed),
        batch_keys=BATCH_KEYS,
        num_train_steps=num_train_steps,
        steps_per_epoch=input_.steps_per_epoch,
        eval_every=config.eval_every_steps,
        evaluate=evaluate,
        keep_period=config.keep_period if config.keep_period > 0 else None,
        start_params=start_params,
        desc="pretrain",
    )
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    speeds = [r["examples_per_second"] for r in records if "examples_per_second" in r]
    summary = {
        "step": num_train_steps,
        "corpus_units": len(units),
        "corpus_tokens": input_.train.num_tokens,
        "rows": len(input_.train),
        "epochs": num_train_steps / input_.steps_per_epoch,
        "tokens_seen": num_train_steps * config.batch_size * length,
        "tokens_per_second": float(np.median(speeds)) * length if speeds else None,
        "vocab_size": input_.vocab_size,
        "heldout": (result.results or {}).get("heldout"),
        "wall_minutes_this_run": (time.time() - started) / 60,
    }
    if is_main:
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
        heldout_metrics = summary["heldout"] or {}
        print(
            f"\n=== pretrain: {num_train_steps} steps ({summary['epochs']:.1f} passes over "
            f"{summary['corpus_tokens']} tokens), held-out masked-token accuracy "
            f"{heldout_metrics.get('mlm_accuracy', float('nan')):.4f}, loss "
            f"{heldout_metrics.get('mlm_loss', float('nan')):.4f}"
            + (
                f", replaced-token detection accuracy {heldout_metrics['rtd_accuracy']:.4f} "
                f"({heldout_metrics['replaced_fraction']:.4f} replaced)"
                if "rtd_accuracy" in heldout_metrics
                else ""
            )
            + " ==="
        )
    logging.info("Pretraining summary: %s", summary)
    return result.state, summary
