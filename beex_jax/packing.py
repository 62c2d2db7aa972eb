"""1-bit packing of binarized parameters and the model-size report (docs/method.md §6).

A binarized leaf `W` is stored as its signs, 8 per byte (bit 1 = +1, `sign(0) = +1`), plus its
float32 alphas; unpacking gives back exactly `alpha * sign(W)`, the values the forward pass uses.
Every other leaf stays float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from beex_jax import binarize as bz

Params = Any
# Keys of a packed binary leaf.
BITS, ALPHA, SHAPE = "bits", "alpha", "shape"


def _leaf_name(path: tuple[Any, ...]) -> str:
    return str(getattr(path[-1], "key", path[-1]))


def _alpha_axis(name: str) -> int:
    return -2 if name == bz.BINARY_KERNEL else -1


def pack_signs(w: np.ndarray) -> np.ndarray:
    """Signs of `w` (>= 0 -> bit 1) packed 8 per byte, flattened in C order."""
    return np.packbits(np.asarray(w).reshape(-1) >= 0)


def unpack_signs(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """+1/-1 float32 array of `shape` from `pack_signs` output."""
    count = math.prod(shape)
    if bits.dtype != np.uint8 or bits.size != (count + 7) // 8:
        raise ValueError(
            f"Packed signs of {bits.size} bytes ({bits.dtype}) do not fit shape {tuple(shape)}."
        )
    signs = np.unpackbits(bits, count=count).astype(np.float32) * 2 - 1
    return signs.reshape(shape)


_scale_factor = jax.jit(bz.scale_factor, static_argnames=("scale", "axis"))


def _alphas(w: np.ndarray, *, name: str, scale: str) -> np.ndarray:
    # A float32 mean depends on the summation order, which XLA picks per shape. Reducing each
    # [in, out] kernel on its own under jit, as the forward pass does inside nn.scan (rather than
    # the stacked [L, in, out] leaf at once), gives bitwise the alphas the latent model uses, so
    # the exported model's outputs equal the latent model's exactly.
    axis = _alpha_axis(name)
    if w.ndim <= 2 or scale == "none":
        return np.asarray(_scale_factor(w, scale=scale, axis=axis))
    kernels = w.reshape((-1, *w.shape[-2:]))
    alphas = np.stack([np.asarray(_scale_factor(k, scale=scale, axis=axis)) for k in kernels])
    return alphas.reshape(w.shape[:-2] + alphas.shape[1:])


def pack_leaf(w: jax.Array, *, name: str, scale: str) -> dict[str, np.ndarray]:
    """{bits, alpha, shape} for one binarized leaf named `binary_kernel`/`binary_embedding`."""
    alpha = _alphas(np.asarray(w, np.float32), name=name, scale=scale)
    return {
        BITS: pack_signs(np.asarray(w)),
        ALPHA: np.asarray(alpha, np.float32),
        SHAPE: np.asarray(np.shape(w), np.int64),
    }


def unpack_leaf(packed: dict[str, np.ndarray]) -> np.ndarray:
    """alpha * sign(W) from a packed leaf."""
    shape = tuple(int(s) for s in packed[SHAPE])
    return (np.asarray(packed[ALPHA], np.float32) * unpack_signs(packed[BITS], shape)).astype(
        np.float32
    )


def pack_params(params: Params, *, scale: str = "per_channel") -> Params:
    """Same tree as `params` with each binarized leaf replaced by {bits, alpha, shape}."""

    def pack(path, leaf):
        if bz.is_binary_path(path):
            return pack_leaf(leaf, name=_leaf_name(path), scale=scale)
        return np.asarray(leaf, np.float32)

    return jax.tree_util.tree_map_with_path(pack, params)


def _is_packed_leaf(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {BITS, ALPHA, SHAPE}


def unpack_params(packed: Params) -> Params:
    """Inverse of `pack_params`: binarized leaves become alpha * sign(W), float32."""
    return jax.tree.map(
        lambda node: unpack_leaf(node) if _is_packed_leaf(node) else np.asarray(node),
        packed,
        is_leaf=_is_packed_leaf,
    )


def _group(path: tuple[Any, ...]) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    if not bz.is_binary_path(path):
        return "float_leftovers"
    if "embed" in keys:
        return "embedding"
    if "exit" in keys:
        return "exit_heads"
    return "blocks"


def size_report(
    params: Params, *, scale: str = "per_channel", binarize: bool = True
) -> dict[str, Any]:
    """Bytes of the packed model vs its float32 counterpart, with a per-group breakdown.

    `binarize=False` (the full-precision model) packs nothing: its ratio is 1.
    """
    groups: dict[str, dict[str, int]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        count = math.prod(np.shape(leaf))
        float_bytes = 4 * count
        if binarize and bz.is_binary_path(path):
            name = _leaf_name(path)
            alpha_shape = jax.eval_shape(
                lambda w, n=name: bz.scale_factor(w, scale=scale, axis=_alpha_axis(n)),
                jax.ShapeDtypeStruct(np.shape(leaf), jnp.float32),
            ).shape
            packed_bytes = (count + 7) // 8 + 4 * math.prod(alpha_shape)
        else:
            packed_bytes = float_bytes
        group = groups.setdefault(
            _group(path), {"packed_bytes": 0, "float32_bytes": 0, "params": 0}
        )
        group["packed_bytes"] += packed_bytes
        group["float32_bytes"] += float_bytes
        group["params"] += count
    packed_total = sum(g["packed_bytes"] for g in groups.values())
    float_total = sum(g["float32_bytes"] for g in groups.values())
    return {
        "packed_bytes": packed_total,
        "float32_bytes": float_total,
        "ratio": float_total / packed_total,
        "num_params": sum(g["params"] for g in groups.values()),
        "groups": groups,
    }
