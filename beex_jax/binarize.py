"""Binarization-aware training (docs/method.md §1): surrogate-gradient sign, scaled binary weights.

Forward: `B(W) = alpha * sign(W)` with `sign(0) = +1`. Backward: the impulse derivative of sign is
replaced by the derivative of a surrogate; the gradient through `alpha = mean|W|` is kept, so the
update carries both the sign and the magnitude of the latent weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

SURROGATES = ("approx_sign", "ste_clip", "identity")
SCALES = ("per_channel", "per_tensor", "none")
# Parameter names of binarized leaves. The name alone marks a leaf as binarized, so packing,
# clipping and weight-decay masks never need to know the model's structure.
BINARY_KERNEL = "binary_kernel"  # [..., in, out]: one alpha per output unit (column).
BINARY_EMBEDDING = "binary_embedding"  # [vocab, d]: one alpha per row (token).
BINARY_PARAM_NAMES = (BINARY_KERNEL, BINARY_EMBEDDING)


def _hard_sign(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


def approx_sign_grad(x: jax.Array) -> jax.Array:
    """F'(x) = 2 - 2|x| on |x| < 1, else 0: derivative of the piecewise-quadratic sign."""
    return jnp.where(jnp.abs(x) < 1, 2.0 - 2.0 * jnp.abs(x), 0.0).astype(x.dtype)


def _ste_clip_grad(x: jax.Array) -> jax.Array:
    return (jnp.abs(x) <= 1).astype(x.dtype)


def _identity_grad(x: jax.Array) -> jax.Array:
    return jnp.ones_like(x)


def _sign_with_surrogate(surrogate_grad: Callable[[jax.Array], jax.Array]):
    @jax.custom_vjp
    def sign(x):
        return _hard_sign(x)

    def forward(x):
        return _hard_sign(x), x

    def backward(x, cotangent):
        return (cotangent * surrogate_grad(x),)

    sign.defvjp(forward, backward)
    return sign


approx_sign = _sign_with_surrogate(approx_sign_grad)
approx_sign.__doc__ = "sign(x) (+1 at 0) whose gradient is the piecewise-quadratic surrogate."
ste_clip_sign = _sign_with_surrogate(_ste_clip_grad)
ste_clip_sign.__doc__ = "sign(x) with the clipped straight-through gradient 1{|x| <= 1}."
identity_sign = _sign_with_surrogate(_identity_grad)
identity_sign.__doc__ = "sign(x) with the plain straight-through (identity) gradient."

_SIGNS = {"approx_sign": approx_sign, "ste_clip": ste_clip_sign, "identity": identity_sign}


def get_sign(surrogate: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the sign function whose backward pass uses the named surrogate."""
    if surrogate not in _SIGNS:
        raise ValueError(f"Unknown surrogate {surrogate!r}; valid: {SURROGATES}.")
    return _SIGNS[surrogate]


def scale_factor(w: jax.Array, *, scale: str, axis: int | tuple[int, ...]) -> jax.Array:
    """alpha = mean |w| over `axis` (per_channel), over the last two axes (per_tensor), or 1."""
    if scale == "per_channel":
        return jnp.mean(jnp.abs(w), axis=axis, keepdims=True)
    if scale == "per_tensor":
        return jnp.mean(jnp.abs(w), axis=(-2, -1), keepdims=True)
    if scale == "none":
        return jnp.ones((1,) * w.ndim, w.dtype)
    raise ValueError(f"Unknown scale {scale!r}; valid: {SCALES}.")


def binary_factors(
    w: jax.Array,
    *,
    axis: int,
    surrogate: str = "approx_sign",
    scale: str = "per_channel",
    detach_scale: bool = False,
    packed: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(alpha, sign(w)) of B(w) = alpha * sign(w), apart (alpha with keepdims over `axis`).

    A dot in bfloat16 takes sign(w) exactly and multiplies its float32 result by alpha
    (`beex_jax.layers.BinaryDense`). `packed`: w already holds alpha * sign(W) (an exported or
    `binarize_params` model), every entry of an alpha group has the same |value|, so alpha is
    the group's max |w| and the sign is w's.
    """
    if packed:
        return jnp.max(jnp.abs(w), axis=axis, keepdims=True), _hard_sign(w)
    alpha = scale_factor(w, scale=scale, axis=axis)
    if detach_scale:
        alpha = jax.lax.stop_gradient(alpha)
    return alpha, get_sign(surrogate)(w)


def _binarize(w, *, surrogate, scale, detach_scale, axis):
    alpha, signs = binary_factors(
        w, axis=axis, surrogate=surrogate, scale=scale, detach_scale=detach_scale
    )
    return alpha * signs


def binarize_kernel(
    w: jax.Array,
    *,
    surrogate: str = "approx_sign",
    scale: str = "per_channel",
    detach_scale: bool = False,
) -> jax.Array:
    """alpha * sign(w) for a kernel [..., in, out]; per_channel gives one alpha per output unit."""
    return _binarize(w, surrogate=surrogate, scale=scale, detach_scale=detach_scale, axis=-2)


def binarize_embedding(
    table: jax.Array,
    *,
    surrogate: str = "approx_sign",
    scale: str = "per_channel",
    detach_scale: bool = False,
) -> jax.Array:
    """alpha * sign(table) for an embedding table [vocab, d]; per_channel is one alpha per row."""
    return _binarize(table, surrogate=surrogate, scale=scale, detach_scale=detach_scale, axis=-1)


def binarize_activations(x: jax.Array, *, surrogate: str = "approx_sign") -> jax.Array:
    """sign(x) scaled by each row's mean |x| (detached): the optional binarized-input mode."""
    alpha = jax.lax.stop_gradient(jnp.mean(jnp.abs(x), axis=-1, keepdims=True))
    return alpha * get_sign(surrogate)(x)


def _binary_leaf(w: jax.Array, *, name: str, scale: str) -> jax.Array:
    """alpha * sign(w) of one latent leaf, each [.., in, out] kernel of a stack on its own."""
    axis = -2 if name == BINARY_KERNEL else -1
    if w.ndim <= 2:
        return scale_factor(w, scale=scale, axis=axis) * _hard_sign(w)
    # Stacked kernels [L, in, out] are reduced one at a time, as nn.scan does in the forward pass,
    # so the float32 alphas (their summation order) equal the latent model's bitwise.
    kernels = w.reshape((-1, *w.shape[-2:]))
    out = jax.lax.map(lambda k: _binary_leaf(k, name=name, scale=scale), kernels)
    return out.reshape(w.shape)


@functools.partial(jax.jit, static_argnames="scale")
def binarize_params(params: Any, *, scale: str) -> Any:
    """Params whose binary leaves hold alpha * sign(W), computed once (for inference)."""

    def leaf(path, w):
        if not is_binary_path(path):
            return w
        last = path[-1]
        return _binary_leaf(w, name=str(getattr(last, "key", last)), scale=scale)

    return jax.tree_util.tree_map_with_path(leaf, params)


def is_binary_path(path: tuple[Any, ...]) -> bool:
    """True when a parameter path (from `jax.tree_util` key paths) ends in a binarized leaf."""
    if not path:
        return False
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", last))
    return str(name) in BINARY_PARAM_NAMES


def binary_mask(params: Any) -> Any:
    """A pytree of bools like `params`: True on binarized (latent) leaves."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_binary_path(path), params)


def clip_latent_weights(limit: float = 1.0) -> optax.GradientTransformation:
    """Optax transformation that keeps latent binary weights in [-limit, limit] after the update."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_latent_weights needs `params` in update().")

        def clip(path, update, param):
            if not is_binary_path(path):
                return update
            return jnp.clip(param + update, -limit, limit) - param

        return jax.tree_util.tree_map_with_path(clip, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)
