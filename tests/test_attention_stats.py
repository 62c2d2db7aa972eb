"""The attention probe's statistics: uniform attention reads as uniform, texts split at [SEP]."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from test_pretrain import _tiny

from beex_jax import mlm
from beex_jax.layers import MultiHeadAttention
from experiments.probes import attention_stats

# [CLS]=2, [SEP]=3, padding 0: two texts in the first row, one in the second.
IDS = jnp.array([[2, 7, 8, 3, 9, 10, 11, 3], [2, 12, 13, 14, 3, 0, 0, 0]], jnp.int32)
MASK = (IDS != 0).astype(jnp.int32)


def test_text_index_ends_each_text_at_its_separator():
    np.testing.assert_array_equal(
        attention_stats.text_index(IDS, separator_id=3),
        [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1]],
    )


def test_attention_weights_are_returned_beside_the_same_output():
    config = _tiny()
    attention = MultiHeadAttention(config.num_heads, config.dense())
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, config.hidden_dim))
    params = attention.init(jax.random.PRNGKey(1), x, MASK)
    out, weights = attention.apply(params, x, MASK, return_weights=True)
    np.testing.assert_array_equal(out, attention.apply(params, x, MASK))
    assert weights.shape == (2, config.num_heads, 8, 8)
    np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-5)
    assert float(jnp.max(weights[1, :, :, 5:])) == 0.0  # Padding gets no attention.


def test_uniform_attention_matches_its_uniform_reference_and_a_trained_one_need_not():
    config = _tiny(binarize=False)
    params = mlm.init_params(config, jax.random.PRNGKey(0), 8)
    kwargs = dict(special_ids=(0, 1, 2, 3, 4), separator_id=3, window=1)
    flat = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.zeros_like(x)
            if any(getattr(k, "key", None) in ("query", "key") for k in path)
            else x
        ),
        params,
    )  # Zero queries and keys: every score equal, attention uniform over the real tokens.
    for block in attention_stats.attention_statistics(config, flat, IDS, IDS * 0, MASK, **kwargs):
        for name in ("entropy", "near_share", "self_share", "same_text_share", "special_share"):
            np.testing.assert_allclose(block[name], block[f"uniform_{name}"], rtol=1e-5)
        # Row 1: 8 real tokens; row 2: 5 (entropy log 8 and log 5).
        np.testing.assert_allclose(block["uniform_entropy"], (8 * np.log(8) + 5 * np.log(5)) / 13)
        np.testing.assert_allclose(block["uniform_self_share"], (8 / 8 + 5 / 5) / 13)
        # Own text: 4 of 8 keys for every token of row 1, all 5 in row 2.
        np.testing.assert_allclose(block["uniform_same_text_share"], (8 * 4 / 8 + 5) / 13)
        # One neighbour either side, not the token itself: 14 of row 1's, 8 of row 2's.
        np.testing.assert_allclose(block["uniform_near_share"], (14 / 8 + 8 / 5) / 13)
    # The same blank queries and keys with ALiBi: the distance penalty alone makes it local.
    alibi_config = dataclasses.replace(config, position="alibi")
    alibi_params = {
        **flat,
        "embed": {k: v for k, v in flat["embed"].items() if k != "position_embedding"},
    }
    for block in attention_stats.attention_statistics(
        alibi_config, alibi_params, IDS, IDS * 0, MASK, **kwargs
    ):
        assert block["near_share"] > block["uniform_near_share"] + 0.005
        assert block["entropy"] < block["uniform_entropy"]
    sharp = jax.tree_util.tree_map_with_path(
        lambda path, x: 50 * x if any(getattr(k, "key", None) == "query" for k in path) else x,
        params,
    )  # Large scores: attention concentrates, entropy falls below uniform.
    stats = attention_stats.attention_statistics(config, sharp, IDS, IDS * 0, MASK, **kwargs)
    summary = attention_stats.summarize(stats)
    assert summary["entropy_below_uniform"] > 0.1
