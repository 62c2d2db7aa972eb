"""Token corruption inside the jitted step: word dropout for fine-tuning, BERT masking for MLM.

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


def num_predictions(length: int, mask_rate: float) -> int:
    """Predictions per row of `length` tokens: round(mask_rate * length), at least 1."""
    return max(1, round(mask_rate * length))


def bert_mask(
    rng: jax.Array,
    input_ids: jax.Array,
    mask: jax.Array,
    *,
    num_predictions: int,
    mask_id: int,
    special_ids: Sequence[int],
    vocab_size: int,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
) -> dict[str, jax.Array]:
    """BERT's masking: `num_predictions` word positions per row, chosen uniformly, become
    [MASK] (80%), a random token (10%) or stay (10%); the model predicts the originals.

    Returns the corrupted `input_ids` [B, T], the chosen `positions` [B, K], their original
    `targets` [B, K] and `weights` [B, K] (0 where a row has fewer than K word positions).
    Random tokens are drawn from the ids above every special token.
    """
    chex.assert_rank(input_ids, 2)
    words = is_word_position(input_ids, mask, special_ids)
    select_key, kind_key, random_key = jax.random.split(rng, 3)
    scores = jnp.where(words, jax.random.uniform(select_key, words.shape), -1.0)
    _, positions = jax.lax.top_k(scores, num_predictions)
    weights = jnp.take_along_axis(words, positions, axis=1)
    targets = jnp.take_along_axis(input_ids, positions, axis=1)
    kind = jax.random.uniform(kind_key, positions.shape)
    first_plain = max(special_ids) + 1
    random_ids = jax.random.randint(
        random_key, positions.shape, first_plain, vocab_size, dtype=input_ids.dtype
    )
    replaced = jnp.where(
        kind < mask_token_rate,
        jnp.asarray(mask_id, input_ids.dtype),
        jnp.where(kind < mask_token_rate + random_token_rate, random_ids, targets),
    )
    replaced = jnp.where(weights, replaced, targets)  # Unused picks change nothing.
    rows = jnp.arange(input_ids.shape[0])[:, None]
    corrupted = input_ids.at[rows, positions].set(replaced)
    return {
        "input_ids": corrupted,
        "positions": positions,
        "targets": targets,
        "weights": weights.astype(jnp.float32),
    }
