"""Binarized building blocks (docs/method.md §1-§2): dense, embedding, attention, SLFN, FFN.

Every binarized layer keeps a float32 latent parameter named `binary_kernel` / `binary_embedding`
and binarizes it on every call while training (inference binarizes once, `packed_weights`, see
`beex_jax.model.inference_params`); `binarize=False` uses the same parameter as a plain float
weight, so both variants share one parameter tree (and one checkpoint layout).

Every dot of the model goes through `einsum`: its operands in the dot dtype, its result in the
activation dtype. They differ in one mode only, `model.dtype="bf16_f32"` (`beex_jax.precision`):
bfloat16 operands, float32 accumulation and result, the fast dot of CPUs with bf16 dot
instructions; there a binarized layer's dot takes sign(W), exact in bfloat16, and alpha scales
its float32 result.
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


def einsum(spec: str, x: jax.Array, y: jax.Array, *, dtype: Dtype, dot_dtype: Dtype) -> jax.Array:
    """`jnp.einsum(spec, x, y)` with operands in `dot_dtype` and the result in `dtype`.

    With `dot_dtype` narrower than `dtype` (bfloat16 into float32) the products are accumulated
    in `dtype` (`preferred_element_type`); so is the backward pass's dot for x (`_mixed_einsum`).
    The model's mixed dots are dense layers ("...i,io->...o", "...d,vd->...v"): the forward dot
    and the one for x contract the last axis of both operands' rows, which XLA:CPU runs as bf16
    dots (YNNPACK). The dot for the weights contracts over rows (tokens), no operand's last axis;
    XLA:CPU has no bf16 dot of that layout (it converts to float32, or for some batched layouts
    fails to run), so it is a float32 dot. Gradients are float32 throughout. `spec` is explicit
    (`->`), every index of an operand in the other one or in the output.
    """
    if jnp.dtype(dot_dtype) == jnp.dtype(dtype):
        return jnp.einsum(spec, x.astype(dtype), y.astype(dtype))
    inputs, out = spec.split("->")
    x_spec, y_spec = inputs.split(",")
    for operand, other in ((x_spec, y_spec), (y_spec, x_spec)):
        if set(operand.replace("...", "")) - set(other + out):
            raise ValueError(f"einsum {spec!r}: an operand's index is in neither the other nor ->.")
    return _mixed_einsum(spec, x.astype(dtype), y.astype(dtype), jnp.dtype(dot_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _mixed_einsum(spec: str, x: jax.Array, y: jax.Array, dot_dtype: jnp.dtype) -> jax.Array:
    """x . y on `dot_dtype` operands, accumulated in x's dtype; the backward dots likewise."""
    return _mixed_einsum_forward(spec, x, y, dot_dtype)[0]


def _mixed_einsum_forward(spec, x, y, dot_dtype):
    narrow = x.astype(dot_dtype), y.astype(dot_dtype)  # Also the residuals: half the memory.
    return jnp.einsum(spec, *narrow, preferred_element_type=x.dtype), narrow


def _mixed_einsum_backward(spec, dot_dtype, narrow, cotangent):
    x, y = narrow
    inputs, out = spec.split("->")
    x_spec, y_spec = inputs.split(",")
    dtype = cotangent.dtype
    g = cotangent.astype(dot_dtype)
    dx = jnp.einsum(f"{out},{y_spec}->{x_spec}", g, y, preferred_element_type=dtype)
    dy = jnp.einsum(f"{x_spec},{out}->{y_spec}", x.astype(dtype), cotangent)
    return dx, dy


_mixed_einsum.defvjp(_mixed_einsum_forward, _mixed_einsum_backward)


def binary_einsum(
    spec: str,
    x: jax.Array,
    w: jax.Array,
    *,
    axis: int,
    dtype: Dtype,
    dot_dtype: Dtype,
    packed: bool = False,
    **binarize: Any,
) -> jax.Array:
    """`einsum(spec, x, alpha * sign(w))`: w latent (binarized here with the `binarize` options
    of `bz.binary_factors`) or `packed` (it holds alpha * sign(W) already).

    alpha is reduced over w's `axis` and scales the output's last axis. In a dot narrower than
    `dtype` the operand is sign(w), exact in bfloat16, and alpha multiplies the wide result.
    """
    alpha, signs = bz.binary_factors(w, axis=axis, packed=packed, **binarize)
    if jnp.dtype(dot_dtype) == jnp.dtype(dtype):
        return einsum(spec, x, w if packed else alpha * signs, dtype=dtype, dot_dtype=dot_dtype)
    y = einsum(spec, x, signs, dtype=dtype, dot_dtype=dot_dtype)
    return y * alpha.reshape(-1).astype(dtype)


def dense_dot_general(dtype: Dtype, dot_dtype: Dtype):
    """`einsum` as the `dot_general` of a `flax.linen.Dense` (the float exit-logits layer)."""

    def dot_general(x, kernel, dimension_numbers, precision=None):
        del precision  # The default, as everywhere in the model.
        if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
            raise ValueError(f"Not a dense layer's dot: {dimension_numbers}.")
        return einsum("...i,io->...o", x, kernel, dtype=dtype, dot_dtype=dot_dtype)

    return dot_general


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
    dtype: Dtype = jnp.float32  # Activations: the dot's result.
    dot_dtype: Dtype | None = None  # The dot's operands (None: dtype); see `einsum`.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            bz.BINARY_KERNEL, kernel_init, (x.shape[-1], self.features), jnp.float32
        )
        dot_dtype = self.dot_dtype or self.dtype
        if self.binarize and self.binarize_inputs:
            x = bz.binarize_activations(x, surrogate=self.surrogate)
        if not self.binarize:
            y = einsum("...i,io->...o", x, kernel, dtype=self.dtype, dot_dtype=dot_dtype)
        else:
            y = binary_einsum(
                "...i,io->...o",
                x,
                kernel,
                axis=-2,
                dtype=self.dtype,
                dot_dtype=dot_dtype,
                packed=self.packed_weights,
                surrogate=self.surrogate,
                scale=self.scale,
                detach_scale=self.detach_scale,
            )
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
        # The score and mixing dots run in `dtype`, float32 also in bf16_f32 mode: XLA:CPU (jax
        # 0.10) fails to run some layouts of batched bf16 -> float32 dots ("Unsupported element
        # type for DotThunk::Execute: BF16 x BF16 = F32"); they are ~8% of the FLOPs at length 64.
        dot = functools.partial(einsum, dtype=self.dtype, dot_dtype=self.dtype)
        scores = dot("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
        if self.alibi:
            scores = scores + alibi_bias(self.num_heads, length).astype(scores.dtype)[None]
        keep = mask[:, None, None, :].astype(bool)
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        mixed = dot("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
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
