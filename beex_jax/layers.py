"""Binarized building blocks (docs/method.md §1-§2): dense, embedding, attention, SLFN, FFN.

Every binarized layer keeps a float32 latent parameter named `binary_kernel` / `binary_embedding`
and binarizes it on every call while training (inference binarizes once, `packed_weights`, see
`beex_jax.model.inference_params`); `binarize=False` uses the same parameter as a plain float
weight, so both variants share one parameter tree (and one checkpoint layout).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from beex_jax import binarize as bz

Dtype = Any
# Latent weights start well inside [-1, 1] so the surrogate gradient is alive (docs/method.md §1).
kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
EMBEDDING_STDDEV = 0.02  # Of the fresh latent token embedding.
embedding_init = nn.initializers.normal(stddev=EMBEDDING_STDDEV)


class BinaryDense(nn.Module):
    """Dense layer whose kernel is `alpha * sign(W)` (latent W float32); float bias."""

    features: int
    use_bias: bool = True
    binarize: bool = True
    surrogate: str = "approx_sign"
    scale: str = "per_channel"
    detach_scale: bool = False
    binarize_inputs: bool = False
    packed_weights: bool = False  # The kernel already holds alpha * sign(W) (exported model).
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            bz.BINARY_KERNEL, kernel_init, (x.shape[-1], self.features), jnp.float32
        )
        if self.binarize and not self.packed_weights:
            kernel = bz.binarize_kernel(
                kernel, surrogate=self.surrogate, scale=self.scale, detach_scale=self.detach_scale
            )
        if self.binarize and self.binarize_inputs:
            x = bz.binarize_activations(x, surrogate=self.surrogate)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class BinaryEmbed(nn.Module):
    """Token embedding whose table is binarized with one alpha per row (token)."""

    num_embeddings: int
    features: int
    binarize: bool = True
    surrogate: str = "approx_sign"
    scale: str = "per_channel"
    detach_scale: bool = False
    packed_weights: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param(
            bz.BINARY_EMBEDDING, embedding_init, (self.num_embeddings, self.features), jnp.float32
        )
        binarize = functools.partial(
            bz.binarize_embedding,
            surrogate=self.surrogate,
            scale=self.scale,
            detach_scale=self.detach_scale,
        )
        if not self.binarize or self.packed_weights:
            return jnp.take(table, ids, axis=0).astype(self.dtype)
        if self.scale == "per_tensor":  # alpha needs the whole table.
            return jnp.take(binarize(table), ids, axis=0).astype(self.dtype)
        # Per-row alpha: binarizing only the rows looked up gives the same values, without a
        # pass over the whole table.
        return binarize(jnp.take(table, ids, axis=0)).astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Self-attention with binarized Q, K, V and output projections; softmax(QK^T / sqrt(d_h))."""

    num_heads: int
    dense: Any  # functools.partial(BinaryDense, ...) carrying the binarization options.
    dtype: Dtype = jnp.float32
    alibi: bool = False  # Subtract slope_h * |i - j| from head h's scores (`alibi_bias`).

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, return_weights: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Mixed values [B, T, d]; with `return_weights` also the attention weights [B, H, T, T]."""
        batch, length, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {self.num_heads}.")
        head_dim = dim // self.num_heads

        def heads(name):
            return self.dense(dim, name=name)(x).reshape(batch, length, self.num_heads, head_dim)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
        if self.alibi:
            scores = scores + alibi_bias(self.num_heads, length).astype(scores.dtype)[None]
        keep = mask[:, None, None, :].astype(bool)
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
        out = self.dense(dim, name="out")(mixed)
        return (out, weights) if return_weights else out


def alibi_bias(num_heads: int, length: int) -> jax.Array:
    """ALiBi's distance penalty, symmetric: -slope_h * |i - j| [H, T, T], slopes 2^(-8h/H)."""
    slopes = 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1) / num_heads)
    distance = jnp.abs(jnp.arange(length)[:, None] - jnp.arange(length)[None, :])
    return -slopes[:, None, None] * distance[None].astype(jnp.float32)


class SLFN(nn.Module):
    """Selective Learn-Forget Network (docs/method.md §2): a sigmoid gate times a tanh branch."""

    hidden_dim: int
    dense: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        gate = self.dense(dim, name="gate_out")(
            nn.sigmoid(self.dense(self.hidden_dim, name="gate_in")(x))
        )
        content = self.dense(dim, name="content_out")(
            jnp.tanh(self.dense(self.hidden_dim, name="content_in")(x))
        )
        return gate * content


class FeedForward(nn.Module):
    """Plain binarized FFN d -> hidden -> d with GELU: the `slfn=False` ablation."""

    hidden_dim: int
    dense: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.gelu(self.dense(self.hidden_dim, name="ffn_in")(x))
        return self.dense(x.shape[-1], name="ffn_out")(hidden)
