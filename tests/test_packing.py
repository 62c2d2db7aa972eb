"""Tests for beex_jax.packing: 1-bit sign packing, packed parameter trees, the size report."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from beex_jax import binarize as bz
from beex_jax import packing
from beex_jax.model import BEExformer, ModelConfig
from configs import glue

float_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=11),
    elements=st.floats(-2.0, 2.0, width=32) | st.sampled_from([0.0, -0.0]),
)


def uniform(seed: int, shape: tuple[int, ...], scale: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-scale, scale, shape).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(float_arrays)
def test_pack_unpack_signs_round_trip(w):
    bits = packing.pack_signs(w)
    assert bits.dtype == np.uint8
    assert bits.size == (w.size + 7) // 8  # Sizes that are not a multiple of 8 round up.
    signs = packing.unpack_signs(bits, w.shape)
    np.testing.assert_array_equal(signs, np.where(w >= 0, 1.0, -1.0))  # sign(+-0) = +1.
    assert signs.dtype == np.float32 and signs.shape == w.shape


def test_pack_signs_bit_layout():
    w = np.array([1.0, -1.0, 0.0, -0.5, 2.0, -3.0, -0.0, 0.1, -1.0, 5.0])
    np.testing.assert_array_equal(packing.pack_signs(w), [0b10101011, 0b01000000])


def test_unpack_signs_rejects_wrong_sizes():
    bits = packing.pack_signs(np.ones(17))
    with pytest.raises(ValueError, match="do not fit"):
        packing.unpack_signs(bits, (5, 5))
    with pytest.raises(ValueError, match="do not fit"):
        packing.unpack_signs(bits.astype(np.int8), (17,))


@pytest.mark.parametrize("scale", bz.SCALES)
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        (bz.BINARY_KERNEL, (5, 3)),
        (bz.BINARY_KERNEL, (2, 7, 3)),  # Stacked by nn.scan: alphas per stage.
        (bz.BINARY_EMBEDDING, (13, 6)),
    ],
)
def test_pack_leaf_unpacks_to_binarized_values(name, shape, scale):
    w = uniform(0, shape)
    w[0, 0] = 0.0
    binarize = bz.binarize_kernel if name == bz.BINARY_KERNEL else bz.binarize_embedding
    packed = packing.pack_leaf(w, name=name, scale=scale)
    np.testing.assert_array_equal(packing.unpack_leaf(packed), binarize(w, scale=scale))
    assert packed[packing.BITS].size == math.prod(shape) // 8 + (math.prod(shape) % 8 > 0)


def hand_tree() -> dict:
    """A small tree whose packed size is easy to count by hand."""
    return {
        "embed": {"token": {"binary_embedding": np.zeros((10, 4), np.float32)}},
        "stages": {
            "block": {
                "binary_kernel": np.zeros((2, 3, 5), np.float32),
                "bias": np.zeros(5, np.float32),
            },
            "exit": {"binary_kernel": np.zeros((4, 3), np.float32)},
        },
    }


def test_size_report_arithmetic_per_channel():
    report = packing.size_report(hand_tree())
    assert report["groups"] == {
        # 40 signs -> 5 bytes, plus 10 per-row alphas.
        "embedding": {"packed_bytes": 5 + 4 * 10, "float32_bytes": 160, "params": 40},
        # 30 signs -> 4 bytes, plus an alpha per output unit of each of the 2 stacked kernels.
        "blocks": {"packed_bytes": 4 + 4 * 2 * 5, "float32_bytes": 120, "params": 30},
        "float_leftovers": {"packed_bytes": 20, "float32_bytes": 20, "params": 5},
        # 12 signs -> 2 bytes, plus 3 alphas.
        "exit_heads": {"packed_bytes": 2 + 4 * 3, "float32_bytes": 48, "params": 12},
    }
    assert report["packed_bytes"] == 45 + 44 + 20 + 14
    assert report["float32_bytes"] == 348
    assert report["num_params"] == 87
    assert report["ratio"] == pytest.approx(348 / 123)


def test_size_report_arithmetic_per_tensor():
    groups = packing.size_report(hand_tree(), scale="per_tensor")["groups"]
    assert groups["embedding"]["packed_bytes"] == 5 + 4
    assert groups["blocks"]["packed_bytes"] == 4 + 4 * 2
    assert groups["exit_heads"]["packed_bytes"] == 2 + 4


def test_size_report_matches_packed_arrays():
    tree = hand_tree()
    stored = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(packing.pack_params(tree))[0]:
        # The shape entry of a packed leaf is metadata, not model bytes.
        if getattr(path[-1], "key", None) != packing.SHAPE:
            stored += leaf.nbytes
    assert stored == packing.size_report(tree)["packed_bytes"]


def test_pack_params_round_trip_tree():
    tree = jax.tree.map(lambda x: uniform(1, np.shape(x)), hand_tree())
    packed = packing.pack_params(tree)
    assert set(packed["stages"]["block"]["binary_kernel"]) == {"bits", "alpha", "shape"}
    unpacked = packing.unpack_params(packed)
    chex.assert_trees_all_equal_structs(unpacked, tree)
    np.testing.assert_array_equal(
        unpacked["stages"]["block"]["bias"], tree["stages"]["block"]["bias"]
    )
    np.testing.assert_array_equal(
        unpacked["stages"]["block"]["binary_kernel"],
        bz.binarize_kernel(tree["stages"]["block"]["binary_kernel"]),
    )


def test_packed_model_equals_latent_model():
    config = glue.get_config("task=mrpc,size=tiny")
    scale = config.model.scale
    cfg = dataclasses.replace(ModelConfig.from_config(config.model), vocab_size=50, num_layers=2)
    ids = np.random.default_rng(2).integers(1, 50, (3, 12)).astype(np.int32)
    segments = (np.arange(12) >= 6).astype(np.int32)[None].repeat(3, 0)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    shapes = jax.eval_shape(BEExformer(cfg).init, jax.random.key(0), ids, segments, mask)
    leaves, treedef = jax.tree.flatten(shapes["params"])
    params = treedef.unflatten([uniform(10 + i, x.shape) for i, x in enumerate(leaves)])

    latent = jax.jit(BEExformer(cfg).apply)({"params": params}, ids, segments, mask)
    exported = packing.unpack_params(packing.pack_params(params, scale=scale))
    packed_cfg = dataclasses.replace(cfg, packed_weights=True)
    out = jax.jit(BEExformer(packed_cfg).apply)({"params": exported}, ids, segments, mask)
    np.testing.assert_array_equal(out, latent)
    assert float(jnp.std(latent)) > 0


def test_size_report_of_the_full_precision_model_packs_nothing():
    params = {"dense": {"binary_kernel": np.ones((16, 8), np.float32), "bias": np.ones(8)}}
    report = packing.size_report(params, binarize=False)
    assert report["ratio"] == 1.0
    assert report["packed_bytes"] == report["float32_bytes"] == 4 * (16 * 8 + 8)
