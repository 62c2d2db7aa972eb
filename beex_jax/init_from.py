"""Starting a GLUE run from a pretrained (or another trained) workdir: `config.init_from`.

The source is any workdir this project wrote (MLM pretraining or GLUE training): its config.json,
its vocabulary and a training checkpoint. What is loaded:
  embed/token         the (binarized) token embedding: same vocabulary, same width;
  embed/position_...  the first max_length rows of the source's longer position table;
  embed/segment       when this model has segments (sentence-pair tasks) and the source too;
  stages/block        every block;
  stages/exit         only with `config.init_from_exits` (a fine-tuned source with the same
                      classes); otherwise the exit heads start fresh.
Anything else of the source (the MLM head) is left behind. A word-vector workdir
(`config.objective=word_vectors`, beex_jax/word_vectors.py) holds only embed/token: it is loaded
and everything else starts fresh; only the width and the vocabulary must agree. Every mismatch is
a one-line `InitFromError` naming what differs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from beex_jax import checkpointing

Params = Any
VOCAB_FILE = "vocab.txt"  # The vocabulary a workdir's model was trained with.
# Model fields that must agree between source and target (the others may differ: classes, ...).
SHAPE_FIELDS = ("hidden_dim", "num_layers", "num_heads", "slfn_dim", "slfn", "norm", "position")
# A source of the embedding alone (word vectors): the fields that must agree with it.
EMBEDDING_ONLY_OBJECTIVE = "word_vectors"
EMBEDDING_FIELDS = ("hidden_dim",)


class InitFromError(ValueError):
    """The workdir given as `config.init_from` cannot initialise this model."""


def source_config(path: str) -> ml_collections.ConfigDict:
    """The config of the workdir `path` (its config.json), or a one-line InitFromError."""
    if not os.path.isdir(path):
        raise InitFromError(f"config.init_from={path} is not a folder.")
    config_file = os.path.join(path, checkpointing.CONFIG_FILE)
    if not os.path.isfile(config_file):
        raise InitFromError(
            f"config.init_from={path} has no {checkpointing.CONFIG_FILE}: not a workdir of "
            f"beex-jax pretraining or training."
        )
    try:
        return ml_collections.ConfigDict(json.loads(epath.Path(config_file).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InitFromError(f"{config_file} is not valid JSON ({e}).") from e


def source_vocab(path: str) -> str:
    """The vocabulary file of the source workdir."""
    vocab = os.path.join(path, VOCAB_FILE)
    if not os.path.isfile(vocab):
        raise InitFromError(
            f"config.init_from={path} has no {VOCAB_FILE}: its model's vocabulary is unknown."
        )
    return vocab


def apply_to_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """With `init_from` set: the source's vocabulary and model shape, checked; else `config`."""
    if not config.get("init_from"):
        return config
    path = os.path.abspath(os.path.expanduser(config.init_from))
    source = source_config(path)
    vocab = source_vocab(path)
    asked = config.data.vocab_file
    if asked and os.path.abspath(os.path.expanduser(asked)) != vocab:
        raise InitFromError(
            f"config.data.vocab_file={asked} differs from the vocabulary of config.init_from "
            f"({vocab}); leave data.vocab_file unset to use the pretrained one."
        )

    def field(model: ml_collections.ConfigDict, name: str) -> Any:
        return model.get(name, _DEFAULTS.get(name))

    embedding_only = holds_embedding_only(source)
    differing = [
        f"{name} {field(source.model, name)!r} vs {field(config.model, name)!r}"
        for name in (EMBEDDING_FIELDS if embedding_only else SHAPE_FIELDS)
        if field(source.model, name) != field(config.model, name)
    ]
    if differing:
        raise InitFromError(
            f"config.init_from={path} holds another model size (pretrained vs this run: "
            f"{'; '.join(differing)}); use the same model fields as the pretraining."
        )
    if not embedding_only and source.model.max_length < config.data.max_length:
        raise InitFromError(
            f"config.init_from={path} learned {source.model.max_length} positions; this task "
            f"needs max_length {config.data.max_length}: pretrain with a longer max_length."
        )
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.vocab_file = vocab
        config.init_from = path
    return config


def holds_embedding_only(source: ml_collections.ConfigDict | str) -> bool:
    """Whether a source workdir (its config, or its path) holds only the token embedding."""
    if isinstance(source, str):
        source = source_config(source)
    return source.get("objective") == EMBEDDING_ONLY_OBJECTIVE


# Defaults of fields that older configs may lack.
_DEFAULTS = {"norm": "post", "slfn": True, "position": "learned"}


def load_params(path: str, step: int = -1) -> Params:
    """Parameters (numpy) of the source's training checkpoint at `step` (-1: the latest)."""
    directory = checkpointing.absolute(path) / checkpointing.LATEST_DIR
    if not directory.exists():
        raise InitFromError(f"config.init_from={path} has no {checkpointing.LATEST_DIR}/ folder.")
    with ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    ) as manager:
        steps = manager.all_steps()
        if not steps:
            raise InitFromError(f"config.init_from={path}: no complete checkpoint in {directory}.")
        step = max(steps) if step < 0 else step
        if step not in steps:
            raise InitFromError(
                f"config.init_from={path} has no checkpoint of step {step}; it has {sorted(steps)}."
            )
        try:
            metadata = manager.item_metadata(step)["state"]
            cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
                dict(metadata)["params"],
            )
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item={"params": target},
                        restore_args=jax.tree.map(
                            lambda _: ocp.ArrayRestoreArgs(sharding=cpu), {"params": target}
                        ),
                        partial_restore=True,
                    )
                ),
            )
        except Exception as e:  # Orbax raises many types; all mean a damaged checkpoint here.
            raise InitFromError(
                f"config.init_from={path}: cannot read the checkpoint of step {step} "
                f"({type(e).__name__}: {str(e)[:200]})."
            ) from e
    return jax.tree.map(np.asarray, restored["state"]["params"])


def merge(
    fresh: Params,
    pretrained: Params,
    *,
    include_exits: bool = False,
    embedding_only: bool = False,
) -> Params:
    """`fresh` parameters with every pretrained one this model has, shapes checked.

    The embedding and the blocks must be in the source (with `embedding_only`, the token
    embedding alone); segments and the MLM head are taken when the source has them (else they
    stay fresh); exit heads only with `include_exits`.
    """
    flat_fresh = traverse_util.flatten_dict(fresh, sep="/")
    flat_source = traverse_util.flatten_dict(pretrained, sep="/")
    out = dict(flat_fresh)
    for name, value in flat_fresh.items():
        if name.startswith(_EXITS) and not include_exits:
            continue
        if name not in flat_source:
            if name.startswith(_OPTIONAL) or (embedding_only and name != _TOKEN_EMBEDDING):
                continue
            raise InitFromError(f"The pretrained parameters have no {name}.")
        source = np.asarray(flat_source[name])
        if name == "embed/position_embedding" and source.shape[0] >= value.shape[0]:
            source = source[: value.shape[0]]  # The task uses the first max_length positions.
        if source.shape != value.shape:
            raise InitFromError(
                f"Pretrained {name} has shape {source.shape}, this model needs {value.shape} "
                f"(another vocabulary or model size)."
            )
        out[name] = source.astype(value.dtype)
    return traverse_util.unflatten_dict(out, sep="/")


_EXITS = "stages/exit/"
_TOKEN_EMBEDDING = "embed/token/binary_embedding"
# Loaded when the source has them: segments (a single-sentence source has none), the MLM head.
_OPTIONAL = ("embed/segment/", "mlm_head/")
