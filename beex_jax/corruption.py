"""Token corruption inside the jitted step: word dropout for fine-tuning.

Corruption runs on the device with an explicit key (folded from the step's key), so the input
pipeline stays a pure function of (seed, step) and a resumed run corrupts exactly the same tokens.
Special tokens ([CLS], [SEP], [PAD]) are never corrupted.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp


def is_word_position(
    input_ids: jax.Array, mask: jax.Array, special_ids: Sequence[int]
) -> jax.Array:
    """True where a real (unpadded) token is not one of `special_ids`: [B, T] bool."""
    chex.assert_equal_shape([input_ids, mask])
    words = mask.astype(bool)
    for special in special_ids:
        words &= input_ids != special
    return words


def word_dropout(
    rng: jax.Array,
    input_ids: jax.Array,
    mask: jax.Array,
    *,
    rate: float,
    unk_id: int,
    special_ids: Sequence[int],
) -> jax.Array:
    """`input_ids` with each word token replaced by `unk_id` with probability `rate`."""
    if rate <= 0.0:
        return input_ids
    drop = jax.random.bernoulli(rng, rate, input_ids.shape)
    drop &= is_word_position(input_ids, mask, special_ids)
    return jnp.where(drop, jnp.asarray(unk_id, input_ids.dtype), input_ids)
