"""Tests for beex_jax.layers: BinaryDense, BinaryEmbed, attention, SLFN and the FFN ablation."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beex_jax import binarize as bz
from beex_jax.layers import SLFN, BinaryDense, BinaryEmbed, FeedForward, MultiHeadAttention

RNG = jax.random.key(0)


def uniform(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Test data from numpy (no per-shape JAX PRNG compiles)."""
    return np.random.default_rng(seed).uniform(-scale, scale, shape).astype(np.float32)


def np_binarize(w: np.ndarray, axis: int) -> np.ndarray:
    """alpha * sign(w) with alpha = mean |w| along `axis` (per_channel), in numpy."""
    return np.mean(np.abs(w), axis=axis, keepdims=True) * np.where(w >= 0, 1.0, -1.0)


def init_and_apply(module: nn.Module, *args) -> tuple[dict, jax.Array]:
    """Random params of `module`'s shapes (numpy-drawn, no init compile) and its jitted output."""
    shapes = jax.eval_shape(module.init, RNG, *args)
    leaves, treedef = jax.tree.flatten(shapes)
    params = treedef.unflatten(
        [uniform(100 + i, leaf.shape, scale=0.5) for i, leaf in enumerate(leaves)]
    )
    return params, jax.jit(module.apply)(params, *args)


def test_binary_dense_param_tree_identical_binarize_on_off():
    x = uniform(0, (2, 3, 8))
    on = jax.eval_shape(BinaryDense(5, binarize=True).init, RNG, x)
    off = jax.eval_shape(BinaryDense(5, binarize=False).init, RNG, x)
    chex.assert_trees_all_equal_structs(on, off)
    chex.assert_trees_all_equal_shapes_and_dtypes(on, off)
    assert set(on["params"]) == {bz.BINARY_KERNEL, "bias"}
    chex.assert_shape(on["params"][bz.BINARY_KERNEL], (8, 5))


def test_binary_dense_latent_weights_start_inside_unit_interval():
    # Well inside [-1, 1], where the surrogate gradient is alive (docs/method.md §1).
    kernel = jax.jit(BinaryDense(64).init)(RNG, jnp.zeros((1, 8)))["params"][bz.BINARY_KERNEL]
    assert 0 < float(jnp.max(jnp.abs(kernel))) < 0.9


@pytest.mark.parametrize("binarize", [True, False])
def test_binary_dense_forward(binarize):
    x = uniform(1, (4, 8))
    params = {"params": {bz.BINARY_KERNEL: uniform(2, (8, 5)), "bias": uniform(3, (5,))}}
    y = jax.jit(BinaryDense(5, binarize=binarize).apply)(params, x)
    w = params["params"][bz.BINARY_KERNEL]
    kernel = np_binarize(w, axis=0) if binarize else w
    np.testing.assert_allclose(y, x @ kernel + params["params"]["bias"], rtol=1e-5, atol=1e-6)


def test_binary_dense_packed_weights_use_kernel_as_is():
    x, w = uniform(4, (3, 6)), uniform(5, (6, 4))
    packed = np_binarize(w, axis=0).astype(np.float32)
    latent = jax.jit(BinaryDense(4, use_bias=False).apply)({"params": {bz.BINARY_KERNEL: w}}, x)
    exported = jax.jit(BinaryDense(4, use_bias=False, packed_weights=True).apply)(
        {"params": {bz.BINARY_KERNEL: packed}}, x
    )
    chex.assert_trees_all_close(exported, latent, rtol=1e-6)


def test_binary_dense_binarized_inputs():
    x, w = uniform(6, (3, 6)), uniform(7, (6, 4))
    y = jax.jit(BinaryDense(4, use_bias=False, binarize_inputs=True).apply)(
        {"params": {bz.BINARY_KERNEL: w}}, x
    )
    np.testing.assert_allclose(
        y, np_binarize(x, axis=-1) @ np_binarize(w, axis=0), rtol=1e-5, atol=1e-6
    )


def test_binary_dense_gradient_reaches_latent_kernel_and_bias():
    x = uniform(8, (4, 6))
    module = BinaryDense(3)
    params, _ = init_and_apply(module, x)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))(params)
    assert float(jnp.min(jnp.abs(grads["params"][bz.BINARY_KERNEL]))) > 0
    assert float(jnp.min(jnp.abs(grads["params"]["bias"]))) > 0


@pytest.mark.parametrize("scale", ["per_channel", "per_tensor"])
def test_binary_embed_per_row_alpha(scale):
    table = uniform(9, (10, 6), scale=0.1)
    ids = np.array([[0, 3, 3, 9], [1, 2, 0, 5]], np.int32)
    out = jax.jit(BinaryEmbed(10, 6, scale=scale).apply)(
        {"params": {"binary_embedding": table}}, ids
    )
    axis = -1 if scale == "per_channel" else (0, 1)
    expected = np.mean(np.abs(table), axis=axis, keepdims=True) * np.where(table >= 0, 1.0, -1.0)
    np.testing.assert_allclose(out, expected[ids], rtol=1e-6)


def test_binary_embed_param_tree_identical_and_float_lookup():
    ids = np.array([[1, 2, 3]], np.int32)
    on = jax.eval_shape(BinaryEmbed(7, 4, binarize=True).init, RNG, ids)
    off = jax.eval_shape(BinaryEmbed(7, 4, binarize=False).init, RNG, ids)
    chex.assert_trees_all_equal_structs(on, off)
    chex.assert_trees_all_equal_shapes_and_dtypes(on, off)
    table = uniform(13, (7, 4))
    params = {"params": {bz.BINARY_EMBEDDING: table}}
    out_off = jax.jit(BinaryEmbed(7, 4, binarize=False).apply)(params, ids)
    out_on = jax.jit(BinaryEmbed(7, 4, binarize=True).apply)(params, ids)
    np.testing.assert_array_equal(out_off, table[ids])
    np.testing.assert_allclose(out_on, np_binarize(table, axis=-1)[ids], rtol=1e-6)


def attention_inputs(seed: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = uniform(seed, (2, 5, 8))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    return x, mask


@pytest.mark.parametrize(("binarize", "alibi"), [(True, False), (False, False), (True, True)])
def test_attention_matches_reference(binarize, alibi):
    x, mask = attention_inputs()
    module = MultiHeadAttention(2, functools.partial(BinaryDense, binarize=binarize), alibi=alibi)
    params, out = init_and_apply(module, x, mask)
    p = params["params"]

    def dense(name, inputs):
        w = np.asarray(p[name][bz.BINARY_KERNEL])
        w = np_binarize(w, axis=0) if binarize else w
        return inputs @ w + np.asarray(p[name]["bias"])

    q, k, v = (dense(n, x).reshape(2, 5, 2, 4) for n in ("query", "key", "value"))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    if alibi:  # Two heads: slopes 2^-4 and 2^-8 times the distance.
        distance = np.abs(np.arange(5)[:, None] - np.arange(5)[None, :])
        scores = scores - np.array([2.0**-4, 2.0**-8])[:, None, None] * distance
    scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 5, 8)
    np.testing.assert_allclose(out, dense("out", mixed), rtol=1e-5, atol=1e-5)


def test_attention_ignores_padded_keys():
    x, mask = attention_inputs()
    module = MultiHeadAttention(2, BinaryDense)
    params, _ = init_and_apply(module, x, mask)
    apply = jax.jit(module.apply)
    changed = x.copy()
    changed[0, 3:] = 100.0  # Padding of the first example.
    np.testing.assert_allclose(
        apply(params, changed, mask)[0, :3], apply(params, x, mask)[0, :3], rtol=1e-6, atol=1e-6
    )


def test_attention_rejects_indivisible_heads():
    x, mask = attention_inputs()
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(MultiHeadAttention(3, BinaryDense).init, RNG, x, mask)


def test_slfn_is_gate_times_content():
    x = uniform(11, (2, 3, 8))
    params, out = init_and_apply(SLFN(16, functools.partial(BinaryDense, binarize=False)), x)
    p = jax.tree.map(np.asarray, params["params"])

    def dense(name, inputs):
        return inputs @ p[name][bz.BINARY_KERNEL] + p[name]["bias"]

    gate = dense("gate_out", 1 / (1 + np.exp(-dense("gate_in", x))))
    content = dense("content_out", np.tanh(dense("content_in", x)))
    np.testing.assert_allclose(out, gate * content, rtol=1e-5, atol=1e-6)
    chex.assert_shape(p["gate_in"][bz.BINARY_KERNEL], (8, 16))
    chex.assert_shape(p["content_out"][bz.BINARY_KERNEL], (16, 8))


def test_feed_forward_shapes_and_value():
    x = uniform(12, (2, 3, 8))
    params, out = init_and_apply(FeedForward(32, functools.partial(BinaryDense, binarize=False)), x)
    p = jax.tree.map(np.asarray, params["params"])
    pre = x @ p["ffn_in"][bz.BINARY_KERNEL] + p["ffn_in"]["bias"]
    hidden = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre**3)))  # nn.gelu
    expected = hidden @ p["ffn_out"][bz.BINARY_KERNEL] + p["ffn_out"]["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    chex.assert_shape(out, x.shape)
