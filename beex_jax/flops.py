"""Analytic FLOPs and BOPs per example (docs/method.md §6), at its real length up to its exit.

FLOPs are 2 x multiply-adds of every executed dense layer, of attention scores and mixing, and of
every evaluated exit head (masked-mean pool, hidden layer, logit layer). Padding costs nothing here:
an example of n real tokens is counted at length n whatever bucket it was batched in. Embedding
lookups count 0; elementwise work (softmax, LayerNorm, activations, biases, residuals, the alpha
scaling) is left out, as is usual for FLOP counts of transformers.

Binarized layers (Q, K, V, O, the SLFN / FFN projections, the exit heads' hidden layers) are also
reported as BOPs: one binary multiply and one add per multiply-add, so BOPs are counted in the same
units as FLOPs, and the common convention of 64 binary ops per FLOP gives the "effective" FLOPs
`float_flops + bops / 64`. With `binarize=False` every layer is float and BOPs are 0.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from beex_jax.model import ModelConfig

# The convention for counting binary operations as FLOPs (e.g. XNOR-Net, Bi-Real Net).
BOPS_PER_FLOP = 64


class FlopTerm(NamedTuple):
    """FLOPs of one part of a stage as `quadratic * n^2 + linear * n + constant` for n tokens."""

    quadratic: int
    linear: int
    constant: int
    binary: bool  # Carried out by a binarized layer (when the model binarizes at all).


def stage_terms(model_config: ModelConfig) -> dict[str, FlopTerm]:
    """FLOPs of each part of one stage (block + its exit head) as polynomials in the length."""
    cfg = model_config
    d, binary = cfg.hidden_dim, cfg.binarize
    terms = {
        # Q, K, V and output projections: four d x d dense layers per token.
        "attention_projections": FlopTerm(0, 2 * 4 * d * d, 0, binary),
        # QK^T over all heads (n x n x d multiply-adds), then weights @ V (the same again).
        "attention_scores_mixing": FlopTerm(2 * 2 * d, 0, 0, False),
    }
    if cfg.slfn:
        # Gate and content branches, each d -> slfn_dim -> d.
        terms["slfn"] = FlopTerm(0, 2 * 4 * d * cfg.slfn_dim, 0, binary)
    else:
        # The ablation's FFN d -> 4d -> d.
        terms["ffn"] = FlopTerm(0, 2 * 2 * d * 4 * d, 0, binary)
    # Exit head: the masked mean is a weighted sum over the n tokens, then two dense layers.
    terms["exit_pool"] = FlopTerm(0, 2 * d, 0, False)
    terms["exit_hidden"] = FlopTerm(0, 0, 2 * d * cfg.exit_dim, binary)
    terms["exit_logits"] = FlopTerm(0, 0, 2 * cfg.exit_dim * cfg.num_classes, False)
    return terms


def _evaluate(term: FlopTerm, n: jax.Array) -> jax.Array:
    return (term.quadratic * n + term.linear) * n + term.constant


def flops_breakdown(
    model_config: ModelConfig, lengths: jax.Array, exit_index: jax.Array | None = None
) -> dict[str, jax.Array]:
    """FLOPs [B] of each example up to its exit (default: full depth), split binary vs float.

    Keys: `flops` (everything, binarized layers counted as dense float layers), `binary_flops`,
    `float_flops`, `bops` (binarized layers' ops; equals `binary_flops`, or 0 if the model is not
    binarized) and `effective_flops = float_flops + bops / 64`.
    """
    lengths = jnp.asarray(lengths)
    chex.assert_rank(lengths, 1)
    if exit_index is None:
        exit_index = jnp.full(lengths.shape, model_config.num_layers - 1, jnp.int32)
    exit_index = jnp.asarray(exit_index)
    chex.assert_equal_shape([lengths, exit_index])
    chex.assert_type([lengths, exit_index], int)
    # Every stage up to the exit runs its block and evaluates its exit head.
    stages = (exit_index + 1).astype(jnp.float32)
    n = lengths.astype(jnp.float32)
    binary = jnp.zeros_like(n)
    floating = jnp.zeros_like(n)
    for term in stage_terms(model_config).values():
        if term.binary:
            binary = binary + _evaluate(term, n)
        else:
            floating = floating + _evaluate(term, n)
    binary, floating = stages * binary, stages * floating
    return {
        "flops": binary + floating,
        "binary_flops": binary,
        "float_flops": floating,
        "bops": binary,
        "effective_flops": floating + binary / BOPS_PER_FLOP,
    }


def per_example_flops(
    model_config: ModelConfig, lengths: jax.Array, exit_index: jax.Array
) -> jax.Array:
    """FLOPs [B] float32 of examples of `lengths` tokens run through stages 0..exit_index."""
    return flops_breakdown(model_config, lengths, exit_index)["flops"]


def full_depth_flops(model_config: ModelConfig, lengths: jax.Array) -> jax.Array:
    """FLOPs [B] float32 of running every block and exit head on examples of `lengths` tokens."""
    return flops_breakdown(model_config, lengths)["flops"]
