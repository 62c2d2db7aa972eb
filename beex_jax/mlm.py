"""Masked-language-model pretraining of the BEExformer body: model, head and loss.

`MaskedLM` is the body of `BEExformer` (the same `Embedder` and `Block`s, binarized the same way,
parameters under the same names: `embed/...`, `stages/block/...`) with an MLM head instead of the
exit heads, so its parameters load into a GLUE model as they are (`init_from.py`). The head is
BERT's: Dense(d) -> GELU -> LayerNorm -> logits over the vocabulary, the output layer tied to the
token embedding. With binarization the tied output uses the whole table binarized
(alpha_v * sign(E_v), one alpha per token), i.e. exactly the embedding the body reads.

Only masked positions go through the head: every row has the same number of predictions
(`corruption.bert_mask`), so the shapes are static. With `every_exit` the head reads the output
of every block (each exit learns to predict too) and the loss is the mean over blocks.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from beex_jax import binarize as bz
from beex_jax import layers
from beex_jax.model import Block, Embedder, ModelConfig, rematted

Params = Any


class _BodyStage(nn.Module):
    """One block as a scan step that also emits its output (named like `Stage`'s block)."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = Block(self.config, name="block")(h, mask, deterministic=self.deterministic)
        return h, h


def body_blocks(config: ModelConfig, num_layers: int, deterministic: bool, name: str) -> nn.Module:
    """`num_layers` blocks scanned under `name`: (h, mask) -> (last output, every output)."""
    return nn.scan(
        rematted(_BodyStage, config),
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast,
        length=num_layers,
    )(config, deterministic, name=name)


class MaskedLM(nn.Module):
    """Token ids and prediction positions -> MLM logits [E, B, K, vocab] (E = 1 or num_layers)."""

    config: ModelConfig
    every_exit: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        chex.assert_equal_shape([input_ids, segment_ids, mask])
        chex.assert_rank(positions, 2)
        embed = Embedder(cfg, name="embed")
        h = embed(input_ids, segment_ids, deterministic=deterministic)
        last, every = body_blocks(cfg, cfg.num_layers, deterministic, "stages")(h, mask)
        hidden = every if self.every_exit else last[None]  # [E, B, T, d]
        picked = jnp.take_along_axis(hidden, positions[None, :, :, None], axis=2)  # [E, B, K, d]
        table = embed.variables["params"]["token"][bz.BINARY_EMBEDDING]
        return MLMHead(cfg, name="mlm_head")(picked, table)


class MLMHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> logits tied to the (binarized) embedding table, + bias."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, table: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        if cfg.norm == "pre":  # The pre-LN residual stream is not normalized.
            h = nn.LayerNorm(dtype=dtype, name="input_norm")(h)
        h = nn.gelu(cfg.dense()(cfg.hidden_dim, name="transform")(h))
        h = nn.LayerNorm(dtype=dtype, name="norm")(h)
        bias = self.param("bias", nn.initializers.zeros, (table.shape[0],), jnp.float32)
        if cfg.binarize:  # Tied to the whole table binarized, as `tied_output_table` gives it.
            logits = layers.binary_einsum(
                "...d,vd->...v",
                h,
                table,
                axis=-1,
                dtype=dtype,
                dot_dtype=cfg.dot_dtype,
                packed=cfg.packed_weights,
                surrogate=cfg.surrogate,
                scale=cfg.scale,
                detach_scale=cfg.detach_scale,
            )
        else:
            logits = layers.einsum("...d,vd->...v", h, table, dtype=dtype, dot_dtype=cfg.dot_dtype)
        return (logits + bias.astype(dtype)).astype(jnp.float32)


def tied_output_table(table: jax.Array, config: ModelConfig) -> jax.Array:
    """The embedding table the output layer uses: all rows binarized, as the body sees them."""
    if not config.binarize or config.packed_weights:
        return table
    return bz.binarize_embedding(
        table, surrogate=config.surrogate, scale=config.scale, detach_scale=config.detach_scale
    )


def mlm_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of the predictions [E, B, K, V] and per-exit accuracy/loss [E]."""
    chex.assert_rank(logits, 4)
    chex.assert_equal_shape([targets, weights])
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets[None])
    per_exit_loss = jnp.sum(per_token * weights[None], axis=(1, 2)) / total
    correct = (jnp.argmax(logits, -1) == targets[None]).astype(jnp.float32)
    per_exit_accuracy = jnp.sum(correct * weights[None], axis=(1, 2)) / total
    metrics = {
        "mlm_loss_per_exit": per_exit_loss,
        "mlm_accuracy_per_exit": per_exit_accuracy,
        "mlm_predictions": jnp.sum(weights),
    }
    return jnp.mean(per_exit_loss), metrics


def init_params(
    config: ModelConfig, rng: jax.Array, length: int = 16, every_exit: bool = False
) -> Params:
    """Initial parameters of `MaskedLM` (the `params` collection)."""
    ids = jnp.zeros((1, length), jnp.int32)
    positions = jnp.zeros((1, 2), jnp.int32)
    return MaskedLM(config, every_exit).init(rng, ids, ids, jnp.ones_like(ids), positions)["params"]


def with_output_bias(params: Params, bias: jax.Array, head: str = "mlm_head") -> Params:
    """`params` with the output bias of the MLM head `head` replaced by `bias` [vocab_size]."""
    chex.assert_equal_shape([params[head]["bias"], bias])
    return {**params, head: {**params[head], "bias": jnp.asarray(bias, jnp.float32)}}
