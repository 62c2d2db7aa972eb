"""The optimizer (docs/method.md §5): AdamW, warm-up, cosine decay, clipping, latent-weight care.

Weight decay applies only to float matrices (dense kernels, position/segment embeddings). Latent
binary weights get none: their magnitude is not what the forward pass uses, and decay would drag
them towards 0, where every sign flips on noise. They are clipped to [-1, 1] after each update
instead, which keeps the surrogate gradient `F'(W)` alive (docs/method.md §1).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from beex_jax import binarize as bz

Params = Any
# Float leaves that never decay: biases and LayerNorm scales.
NO_DECAY_NAMES = ("bias", "scale")
# The body a pretrained model hands over (init_from.py): the embedding and the blocks.
BODY_PREFIXES = ("embed/", "stages/block/")
TOKEN_EMBEDDING_PREFIX = "embed/token/"


def _leaf_name(path: tuple[Any, ...]) -> str:
    return str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))


def decay_mask(params: Params, *, binarized: bool = True) -> Params:
    """True on leaves that get weight decay: weights, but not biases, norms or latent binary ones.

    With `binarized=False` (the full-precision counterpart) the `binary_*` leaves are ordinary
    float weights and decay like them.
    """

    def decays(path, _):
        if binarized and bz.is_binary_path(path):
            return False
        return _leaf_name(path) not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def body_mask(params: Params) -> Params:
    """True on the embedding and block parameters (the body), False on exit and MLM heads."""

    def in_body(path, _):
        return _path_name(path).startswith(BODY_PREFIXES)

    return jax.tree_util.tree_map_with_path(in_body, params)


def token_embedding_mask(params: Params) -> Params:
    """True on the token embedding table alone."""

    def is_token_table(path, _):
        return _path_name(path).startswith(TOKEN_EMBEDDING_PREFIX)

    return jax.tree_util.tree_map_with_path(is_token_table, params)


def layer_decay_scales(params: Params, decay: float, num_blocks: int) -> Params:
    """Per-leaf learning-rate multipliers of layer-wise decay: block i of `num_blocks` (stacked on
    the leading axis) gets `decay ** (num_blocks - i)`, the embedding `decay ** (num_blocks + 1)`,
    exit and MLM heads 1 (so the top block moves most, the embedding least)."""
    block_factors = decay ** np.arange(num_blocks, 0, -1, dtype=np.float32)

    def scale(path, leaf):
        name = _path_name(path)
        if name.startswith("stages/block/"):
            return block_factors.reshape((-1,) + (1,) * (leaf.ndim - 1))
        if name.startswith("embed/"):
            return np.float32(decay ** (num_blocks + 1))
        return np.float32(1.0)

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer_decay(decay: float, num_blocks: int) -> optax.GradientTransformation:
    """Multiplies each update by its `layer_decay_scales` factor."""

    def scale_updates(updates, params=None):
        del params
        scales = layer_decay_scales(updates, decay, num_blocks)
        return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, scales)

    return optax.stateless(scale_updates)


def learning_rate_schedule(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> optax.Schedule:
    """Linear warm-up over `warmup_fraction` of the steps to the peak, then cosine decay to 0."""
    warmup_steps = round(config.optim.warmup_fraction * num_train_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.optim.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(num_train_steps, warmup_steps + 1),
        end_value=0.0,
    )


def create_optimizer(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping and [-1, 1] clipping of latent binary weights.

    With `optim.body_lr_scale` != 1 the body's updates (weight decay included) are scaled by it:
    a gentler learning rate for a pretrained embedding and blocks than for the fresh exit heads.
    With `optim.layer_decay` < 1 the rate also falls by that factor per block below the top one
    (`layer_decay_scales`), composing with `body_lr_scale`. `optim.embedding_lr_scale` scales the
    token embedding table's updates alone (composing with both): a pretrained table (word
    vectors) kept while fresh blocks learn at the full rate.
    """
    schedule = learning_rate_schedule(config, num_train_steps)
    parts = []
    if config.optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.optim.b1,
            b2=config.optim.b2,
            weight_decay=config.optim.weight_decay,
            mask=functools.partial(decay_mask, binarized=config.model.binarize),
        )
    )
    if config.optim.body_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(config.optim.body_lr_scale), body_mask))
    embedding_lr_scale = config.optim.get("embedding_lr_scale", 1.0)
    if embedding_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(embedding_lr_scale), token_embedding_mask))
    if config.optim.layer_decay != 1.0:
        parts.append(scale_by_layer_decay(config.optim.layer_decay, config.model.num_layers))
    if config.optim.clip_latent and config.model.binarize:
        parts.append(bz.clip_latent_weights(1.0))
    return optax.chain(*parts), schedule


def sign_flip_fraction(old_params: Params, new_params: Params) -> jax.Array:
    """Fraction of latent binary weights whose sign changed between two parameter trees.

    The health signal of binarization-aware training: ~0 means the binary network is frozen,
    a large value means it is thrashing. 0 when the model has no binarized leaf.
    """
    flips, total = jnp.zeros((), jnp.float32), 0
    mask = bz.binary_mask(old_params)
    for is_binary, old, new in zip(
        jax.tree.leaves(mask), jax.tree.leaves(old_params), jax.tree.leaves(new_params), strict=True
    ):
        if is_binary:
            flips += jnp.sum((old >= 0) != (new >= 0), dtype=jnp.float32)
            total += old.size
    return flips / max(total, 1)
