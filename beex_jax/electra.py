"""ELECTRA-style replaced-token detection (RTD) for pretraining the BEExformer body.

A small generator (the shared `Embedder`, `generator_layers` blocks and the tied MLM head of
`mlm.py`) fills the masked positions with tokens sampled from its own predictions; the
discriminator -- the BEExformer body itself, parameters under the same names as in `MaskedLM`
(`embed/...`, `stages/block/...`) so they load into a GLUE model as they are -- reads the
result and tells, for every token, whether it is the original. Every token carries a loss, not
only the 15% that were masked: the denser signal ELECTRA found to learn more per step. The
generator and discriminator share the token, position and segment embeddings. The sample is not
differentiated: the generator learns only from its MLM loss. With binarization every dense kernel
of both, and the tied output table, is binarized as in fine-tuning.

`every_exit` puts the RTD head after every block (one head shared by all, as the exit heads of
`BEExformer` read every block); the loss is then the mean over blocks.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from beex_jax import binarize as bz
from beex_jax.mlm import MLMHead, body_blocks
from beex_jax.model import Embedder, ModelConfig

Params = Any


class RTDHead(nn.Module):
    """Dense -> GELU -> Dense(1): one replaced-or-original logit per token."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.norm == "pre":  # The pre-LN residual stream is not normalized.
            h = nn.LayerNorm(dtype=cfg.activation_dtype, name="input_norm")(h)
        h = nn.gelu(cfg.dense()(cfg.hidden_dim, name="transform")(h))
        return cfg.dense()(1, name="logit")(h)[..., 0].astype(jnp.float32)


class Electra(nn.Module):
    """Masked ids -> generator logits [1, B, K, V], the sampled ids [B, T], RTD logits [E, B, T].

    The sample is drawn with the `sample` RNG stream at `temperature`.
    """

    config: ModelConfig
    generator_layers: int = 2
    temperature: float = 1.0
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
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.config
        chex.assert_equal_shape([input_ids, segment_ids, mask])
        chex.assert_rank(positions, 2)
        embed = Embedder(cfg, name="embed")
        h = embed(input_ids, segment_ids, deterministic=deterministic)
        table = embed.variables["params"]["token"][bz.BINARY_EMBEDDING]
        generated, _ = body_blocks(cfg, self.generator_layers, deterministic, "generator")(h, mask)
        picked = jnp.take_along_axis(generated, positions[:, :, None], axis=1)  # [B, K, d]
        generator_logits = MLMHead(cfg, name="generator_head")(picked[None], table)

        logits = jax.lax.stop_gradient(generator_logits[0]) / self.temperature
        sampled = jax.random.categorical(self.make_rng("sample"), logits).astype(input_ids.dtype)
        rows = jnp.arange(input_ids.shape[0])[:, None]
        replaced = input_ids.at[rows, positions].set(sampled)

        h = embed(replaced, segment_ids, deterministic=deterministic)
        last, every = body_blocks(cfg, cfg.num_layers, deterministic, "stages")(h, mask)
        hidden = every if self.every_exit else last[None]  # [E, B, T, d]
        return generator_logits, replaced, RTDHead(cfg, name="rtd_head")(hidden)


def rtd_targets(sampled_ids: jax.Array, original_ids: jax.Array) -> jax.Array:
    """1 where a token differs from the original (a sample equal to it counts as original)."""
    chex.assert_equal_shape([sampled_ids, original_ids])
    return (sampled_ids != original_ids).astype(jnp.float32)


def rtd_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean sigmoid cross-entropy over real tokens of the RTD logits [E, B, T], and per-exit
    loss/accuracy [E], with the replaced share (accuracy of always answering "original" is
    1 minus it)."""
    chex.assert_rank(logits, 3)
    chex.assert_equal_shape([targets, mask])
    weights = mask.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    per_token = optax.sigmoid_binary_cross_entropy(logits, targets[None])
    per_exit_loss = jnp.sum(per_token * weights[None], axis=(1, 2)) / total
    correct = ((logits > 0) == (targets[None] > 0.5)).astype(jnp.float32)
    per_exit_accuracy = jnp.sum(correct * weights[None], axis=(1, 2)) / total
    metrics = {
        "rtd_loss_per_exit": per_exit_loss,
        "rtd_accuracy_per_exit": per_exit_accuracy,
        "rtd_tokens": jnp.sum(weights),
        "replaced_fraction": jnp.sum(targets * weights) / total,
    }
    return jnp.mean(per_exit_loss), metrics


def init_params(
    config: ModelConfig,
    rng: jax.Array,
    length: int = 16,
    *,
    generator_layers: int = 2,
    every_exit: bool = False,
) -> Params:
    """Initial parameters of `Electra` (the `params` collection)."""
    ids = jnp.zeros((1, length), jnp.int32)
    positions = jnp.zeros((1, 2), jnp.int32)
    model = Electra(config, generator_layers, every_exit=every_exit)
    params_rng, sample_rng = jax.random.split(rng)
    variables = model.init(
        {"params": params_rng, "sample": sample_rng}, ids, ids, jnp.ones_like(ids), positions
    )
    return variables["params"]
