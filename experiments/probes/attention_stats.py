"""How far a BEExformer body's attention reads: per block, the entropy of its attention weights
and the share of them on the token itself and on its near neighbours, against uniform attention.
A library of experiments/probes/attention_probe.py (and its tests), not run on its own.

A body that has learned to read context concentrates attention (low entropy, often on nearby
tokens); one that has not spreads it evenly over the row, i.e. computes a bag of words.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beex_jax.layers import MultiHeadAttention
from beex_jax.model import Block, Embedder, ModelConfig

Params = Any


def text_index(input_ids: jax.Array, separator_id: int) -> jax.Array:
    """Index [B, T] of the packed text each token belongs to (a text ends with its separator)."""
    is_separator = (input_ids == separator_id).astype(jnp.int32)
    return jnp.cumsum(is_separator, axis=-1) - is_separator


def _statistics(
    weights: jax.Array,
    input_ids: jax.Array,
    mask: jax.Array,
    window: int,
    special_ids: tuple[int, ...],
    separator_id: int,
) -> dict[str, float]:
    """Means over heads and real query tokens of `weights` [B, H, T, T], and of uniform ones."""
    length = weights.shape[-1]
    real = mask.astype(bool)  # [B, T]
    distance = jnp.abs(jnp.arange(length)[:, None] - jnp.arange(length)[None, :])
    near = (distance > 0) & (distance <= window)
    texts = text_index(input_ids, separator_id)
    same_text = texts[:, :, None] == texts[:, None, :]  # [B, T, T]
    special = jnp.isin(input_ids, jnp.asarray(special_ids))  # [B, T] keys
    entropy = -jnp.sum(jnp.where(weights > 0, weights * jnp.log(weights), 0.0), axis=-1)
    near_share = jnp.sum(jnp.where(near, weights, 0.0), axis=-1)
    self_share = jnp.diagonal(weights, axis1=-2, axis2=-1)
    same_text_share = jnp.sum(jnp.where(same_text[:, None], weights, 0.0), axis=-1)
    special_share = jnp.sum(jnp.where(special[:, None, None, :], weights, 0.0), axis=-1)
    # Uniform attention over each row's real tokens, for reference.
    keys = jnp.sum(mask, axis=-1, keepdims=True).astype(jnp.float32)  # [B, 1]
    near_keys = jnp.sum(near[None] & real[:, None, :], axis=-1)  # [B, T]
    same_text_keys = jnp.sum(same_text & real[:, None, :], axis=-1)  # [B, T]
    special_keys = jnp.sum(special & real, axis=-1, keepdims=True)  # [B, 1]

    def mean(x):  # x [B, H, T] or [B, T]: over heads and real queries.
        x = x if x.ndim == 2 else jnp.mean(x, axis=1)
        return float(jnp.sum(jnp.where(real, x, 0.0)) / jnp.sum(real))

    return {
        "entropy": mean(entropy),
        "uniform_entropy": mean(jnp.broadcast_to(jnp.log(keys), real.shape)),
        "near_share": mean(near_share),
        "uniform_near_share": mean(near_keys / keys),
        "self_share": mean(self_share),
        "uniform_self_share": mean(jnp.broadcast_to(1.0 / keys, real.shape)),
        "same_text_share": mean(same_text_share),
        "uniform_same_text_share": mean(same_text_keys / keys),
        "special_share": mean(special_share),
        "uniform_special_share": mean(jnp.broadcast_to(special_keys / keys, real.shape)),
    }


def attention_statistics(
    config: ModelConfig,
    params: Params,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
    *,
    special_ids: tuple[int, ...],
    separator_id: int,
    window: int = 2,
) -> list[dict[str, float]]:
    """Per block of the body in `params` (`embed`, `stages/block`): attention entropy (nats) and
    the shares on the token itself, on the `window` tokens either side, on the tokens of its own
    packed text (texts end at `separator_id`) and on special tokens, each beside its value for
    uniform attention, averaged over heads and real tokens of the rows given."""
    h = Embedder(config).apply({"params": params["embed"]}, input_ids, segment_ids)
    out = []
    for index in range(config.num_layers):
        block = jax.tree.map(lambda x, i=index: x[i], params["stages"]["block"])
        x = h
        if config.norm == "pre":
            x = nn.LayerNorm(dtype=config.activation_dtype).apply(
                {"params": block["attention_norm"]}, h
            )
        _, weights = MultiHeadAttention(
            config.num_heads,
            config.dense(),
            dtype=config.activation_dtype,
            alibi=config.position == "alibi",
        ).apply({"params": block["attention"]}, x, mask, return_weights=True)
        weights = weights.astype(jnp.float32)
        out.append(_statistics(weights, input_ids, mask, window, special_ids, separator_id))
        h = Block(config).apply({"params": block}, h, mask)
    return out


def summarize(per_block: list[dict[str, float]]) -> dict[str, float]:
    """Means over blocks, and the entropy's drop below uniform (nats)."""
    means = {key: float(np.mean([b[key] for b in per_block])) for key in per_block[0]}
    means["entropy_below_uniform"] = means["uniform_entropy"] - means["entropy"]
    return means
