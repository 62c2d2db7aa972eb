"""Tests for beex_jax.binarize: sign surrogates, binarize_kernel/_embedding, latent clipping."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beex_jax import binarize as bz

# A dense grid over [-2, 2] in steps of 0.01 that contains -1, 0 and 1 exactly, plus far points.
GRID = jnp.concatenate([jnp.arange(-200, 201, dtype=jnp.float32) / 100, jnp.array([-7.0, 7.0])])


def piecewise_quadratic_sign(x: jax.Array) -> jax.Array:
    """F(x) of docs/method.md §1, written independently of the library."""
    return jnp.where(
        x < -1, -1.0, jnp.where(x < 0, 2 * x + x**2, jnp.where(x < 1, 2 * x - x**2, 1.0))
    )


def elementwise_grad(fn, x: jax.Array) -> jax.Array:
    """d fn(x_i) / d x_i for every element, via jit(vmap(grad))."""
    return jax.jit(jax.vmap(jax.grad(fn)))(x)


def test_grid_contains_kinks():
    for point in (-1.0, 0.0, 1.0):
        assert point in np.asarray(GRID)


@pytest.mark.parametrize("surrogate", bz.SURROGATES)
def test_sign_forward_values(surrogate):
    sign = bz.get_sign(surrogate)
    x = jnp.array([-3.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 3.0])
    expected = jnp.array([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    chex.assert_trees_all_equal(sign(x), expected)
    chex.assert_trees_all_equal(jax.jit(sign)(x), expected)


def test_approx_sign_grad_on_dense_grid():
    grad = elementwise_grad(bz.approx_sign, GRID)
    expected = np.where(np.abs(GRID) < 1, 2 - 2 * np.abs(GRID), 0.0)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-6)
    # Peak 2 at 0, and exactly 0 at the kinks and outside.
    assert float(grad[GRID == 0.0][0]) == 2.0
    assert float(jnp.max(jnp.abs(grad[jnp.abs(GRID) >= 1]))) == 0.0


def test_approx_sign_grad_is_derivative_of_piecewise_quadratic():
    np.testing.assert_allclose(
        elementwise_grad(bz.approx_sign, GRID),
        elementwise_grad(piecewise_quadratic_sign, GRID),
        rtol=0,
        atol=1e-6,
    )
    # And F itself approximates sign: it meets it at and outside +-1.
    outside = jnp.abs(GRID) >= 1
    chex.assert_trees_all_equal(
        piecewise_quadratic_sign(GRID)[outside], bz.approx_sign(GRID)[outside]
    )


@pytest.mark.parametrize(
    ("surrogate", "expected_fn"),
    [
        ("approx_sign", lambda x: np.where(np.abs(x) < 1, 2 - 2 * np.abs(x), 0.0)),
        ("ste_clip", lambda x: np.where(np.abs(x) <= 1, 1.0, 0.0)),
        ("identity", np.ones_like),
    ],
)
def test_surrogate_gradients(surrogate, expected_fn):
    grad = elementwise_grad(bz.get_sign(surrogate), GRID)
    np.testing.assert_allclose(grad, expected_fn(np.asarray(GRID)), rtol=0, atol=1e-6)


def test_sign_grad_scales_cotangent():
    x = jnp.array([-0.5, 0.25, 2.0])
    g = jnp.array([3.0, -2.0, 5.0])
    _, vjp = jax.vjp(bz.approx_sign, x)
    np.testing.assert_allclose(vjp(g)[0], g * jnp.array([1.0, 1.5, 0.0]), rtol=1e-6)


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="surrogate"):
        bz.get_sign("tanh")
    with pytest.raises(ValueError, match="scale"):
        bz.scale_factor(jnp.ones((2, 2)), scale="per_row", axis=-2)


def random_kernel(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Latent weights inside and outside [-1, 1], so every branch of F' is hit."""
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.5, 1.5, shape), jnp.float32)


def closed_form_kernel_grad(
    w: np.ndarray, g: np.ndarray, *, surrogate: str, scale: str, detach_scale: bool, axis: int
) -> np.ndarray:
    """dL/dW of L = sum(g * alpha * sign(W)) by docs/method.md §1: sign term plus magnitude term."""
    w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
    sign = np.where(w >= 0, 1.0, -1.0)
    surrogate_grad = {
        "approx_sign": np.where(np.abs(w) < 1, 2 - 2 * np.abs(w), 0.0),
        "ste_clip": np.where(np.abs(w) <= 1, 1.0, 0.0),
        "identity": np.ones_like(w),
    }[surrogate]
    axes = {"per_channel": (axis,), "per_tensor": (-2, -1), "none": None}[scale]
    if axes is None:
        return surrogate_grad * g  # alpha = 1 and nothing flows through it.
    n = np.prod([w.shape[a] for a in axes])
    alpha = np.mean(np.abs(w), axis=axes, keepdims=True)
    sign_term = alpha * surrogate_grad * g
    if detach_scale:
        return sign_term
    magnitude_term = np.sum(g * sign, axis=axes, keepdims=True) * sign / n
    return sign_term + magnitude_term


KERNEL_CASES = [
    (scale, detach_scale, "approx_sign") for scale in bz.SCALES for detach_scale in (False, True)
] + [("per_channel", False, "ste_clip"), ("per_tensor", False, "identity")]


@pytest.mark.parametrize(("scale", "detach_scale", "surrogate"), KERNEL_CASES)
def test_binarize_kernel_grad_matches_closed_form(scale, detach_scale, surrogate):
    # A stack of 3 kernels [3, in=6, out=4], as nn.scan stores them: alpha is per kernel.
    w, g = random_kernel(0, (3, 6, 4)), random_kernel(1, (3, 6, 4))
    binarize = functools.partial(
        bz.binarize_kernel, surrogate=surrogate, scale=scale, detach_scale=detach_scale
    )
    grad = jax.jit(jax.grad(lambda w: jnp.sum(g * binarize(w))))(w)
    expected = closed_form_kernel_grad(
        w, g, surrogate=surrogate, scale=scale, detach_scale=detach_scale, axis=-2
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("detach_scale", [False, True])
def test_binarize_embedding_grad_matches_closed_form(detach_scale):
    # Per-row alpha; the other scales share binarize_kernel's code (tested above).
    scale = "per_channel"
    table, g = random_kernel(2, (9, 6)), random_kernel(3, (9, 6))
    binarize = functools.partial(bz.binarize_embedding, scale=scale, detach_scale=detach_scale)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(g * binarize(t))))(table)
    expected = closed_form_kernel_grad(
        table, g, surrogate="approx_sign", scale=scale, detach_scale=detach_scale, axis=-1
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_binarize_kernel_forward_per_output_unit():
    w = jnp.array([[0.5, -0.1], [-0.25, 0.0], [0.0, 0.2]])
    alpha = np.array([0.75 / 3, 0.3 / 3])  # mean |w| of each column.
    expected = alpha * np.array([[1, -1], [-1, 1], [1, 1]])
    np.testing.assert_allclose(bz.binarize_kernel(w), expected, rtol=1e-6)
    np.testing.assert_allclose(bz.binarize_kernel(w, scale="per_tensor"), np.sign(expected) * 0.175)
    chex.assert_trees_all_equal(bz.binarize_kernel(w, scale="none"), jnp.sign(expected))


def test_binarize_embedding_per_row_alpha():
    table = random_kernel(4, (11, 8))
    out = bz.binarize_embedding(table)
    alpha = np.mean(np.abs(table), axis=1, keepdims=True)
    chex.assert_trees_all_close(out, alpha * np.where(table >= 0, 1.0, -1.0), rtol=1e-6)
    # Each row takes exactly two values, +-alpha_row; rows differ from each other.
    np.testing.assert_allclose(np.abs(out), np.broadcast_to(alpha, out.shape), rtol=1e-6)
    assert len(np.unique(np.asarray(alpha))) == table.shape[0]


@pytest.mark.parametrize("scale", bz.SCALES)
def test_binarize_under_jit_vmap_grad(scale):
    w = random_kernel(5, (4, 6, 3))
    binarize = functools.partial(bz.binarize_kernel, scale=scale)

    def loss(k):
        return jnp.sum(jnp.sin(binarize(k)))

    # Reference: each kernel of the stack on its own, through jit.
    single, single_grad = jax.jit(binarize), jax.jit(jax.grad(loss))
    per_kernel = jnp.stack([single(k) for k in w])
    per_kernel_grads = jnp.stack([single_grad(k) for k in w])
    # Binarizing a stack of kernels at once equals doing each on its own (what nn.scan relies on).
    chex.assert_trees_all_close(binarize(w), per_kernel, rtol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.vmap(binarize))(w), per_kernel, rtol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.vmap(jax.grad(loss)))(w), per_kernel_grads, rtol=1e-6)
    chex.assert_trees_all_close(
        jax.jit(jax.grad(lambda k: jnp.sum(jax.vmap(loss)(k))))(w), per_kernel_grads, rtol=1e-6
    )


def test_binarize_activations_detaches_alpha():
    x, g = random_kernel(6, (3, 5)), random_kernel(7, (3, 5))
    alpha = np.mean(np.abs(x), axis=-1, keepdims=True)
    value, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(g * bz.binarize_activations(x))))(x)
    chex.assert_trees_all_close(value, np.sum(g * alpha * np.where(x >= 0, 1.0, -1.0)), rtol=1e-6)
    surrogate_grad = np.where(np.abs(x) < 1, 2 - 2 * np.abs(x), 0.0)
    chex.assert_trees_all_close(grad, alpha * surrogate_grad * g, rtol=1e-6, atol=1e-7)


def make_params() -> dict:
    """A tree with binarized and float leaves at several depths."""
    return jax.tree.map(
        lambda x: np.asarray(x, np.float32),
        {
            "embed": {"token": {"binary_embedding": np.full((4, 3), 0.9)}, "pos": np.zeros((2, 3))},
            "stages": {"dense": {"binary_kernel": np.full((2, 3, 3), -0.9), "bias": np.ones(3)}},
            "logits": {"kernel": np.full((3, 2), 0.9)},
        },
    )


def test_binary_mask_and_is_binary_path():
    mask = bz.binary_mask(make_params())
    assert mask == {
        "embed": {"token": {"binary_embedding": True}, "pos": False},
        "stages": {"dense": {"binary_kernel": True, "bias": False}},
        "logits": {"kernel": False},
    }
    assert not bz.is_binary_path(())
    assert bz.is_binary_path((jax.tree_util.GetAttrKey("binary_kernel"),))


def test_clip_latent_weights_clips_binary_leaves_only():
    params = make_params()
    updates = jax.tree.map(lambda p: 0.5 * np.sign(p) + 0.5 * (p == 0), params)
    tx = bz.clip_latent_weights()
    clipped = jax.jit(lambda u, p: tx.update(u, tx.init(p), p)[0])
    new = jax.tree.map(np.add, params, clipped(updates, params))
    np.testing.assert_array_equal(new["embed"]["token"]["binary_embedding"], 1.0)
    np.testing.assert_array_equal(new["stages"]["dense"]["binary_kernel"], -1.0)
    # Float leaves move by the full update, even past 1.
    chex.assert_trees_all_close(new["logits"]["kernel"], jnp.full((3, 2), 1.4))
    chex.assert_trees_all_close(new["stages"]["dense"]["bias"], jnp.full(3, 1.5))
    chex.assert_trees_all_close(new["embed"]["pos"], jnp.full((2, 3), 0.5))
    # Updates that stay inside [-1, 1] pass unchanged.
    small = jax.tree.map(lambda p: np.full_like(p, 0.05), params)
    kept = clipped(small, params)
    chex.assert_trees_all_close(kept, small, atol=1e-7)
    with pytest.raises(ValueError, match="params"):
        tx.update(updates, tx.init(params))


def test_clip_latent_weights_in_chain_under_jit():
    params = make_params()
    tx = optax.chain(optax.sgd(10.0), bz.clip_latent_weights(limit=0.5))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: -sum(jnp.sum(x * x) for x in jax.tree.leaves(p)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state)
    # Gradient ascent on |p|^2 with lr 10: p -> 21 p, clipped to +-0.5 on binary leaves only.
    np.testing.assert_array_equal(params["embed"]["token"]["binary_embedding"], 0.5)
    np.testing.assert_array_equal(params["stages"]["dense"]["binary_kernel"], -0.5)
    chex.assert_trees_all_close(params["logits"]["kernel"], jnp.full((3, 2), 18.9), rtol=1e-6)
    chex.assert_trees_all_close(params["stages"]["dense"]["bias"], jnp.full(3, 21.0), rtol=1e-6)
