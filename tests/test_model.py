"""Tests for beex_jax.model: shapes, padding invariance, variants, dropout, stages, training."""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beex_jax import binarize as bz
from beex_jax.model import BEExformer, Embedder, ModelConfig, Stage, init_params, stage_params
from configs import glue

RNG = jax.random.key(0)


def model_config(arg: str = "task=mrpc,size=tiny", **overrides) -> ModelConfig:
    """The static model config of a `configs/glue.py` variant, with field overrides."""
    return dataclasses.replace(ModelConfig.from_config(glue.get_config(arg).model), **overrides)


# Tiny pair-task model with a small vocabulary: segments, binarization and dropout all active.
TINY = model_config(vocab_size=100)


def batch(seed: int, lengths: list[int], length: int) -> dict[str, np.ndarray]:
    """Random token ids of the given real lengths, right-padded with id 0 to `length`."""
    rng = np.random.default_rng(seed)
    positions = np.arange(length)[None]
    mask = (positions < np.array(lengths)[:, None]).astype(np.int32)
    ids = rng.integers(1, 100, (len(lengths), length)).astype(np.int32) * mask
    segments = (positions >= np.array(lengths)[:, None] // 2).astype(np.int32) * mask
    return {"input_ids": ids, "segment_ids": segments, "mask": mask}


@functools.cache
def forward(cfg: ModelConfig, deterministic: bool = True):
    """Jitted `BEExformer(cfg).apply(params, ids, segments, mask)`, one per config."""
    return jax.jit(functools.partial(BEExformer(cfg).apply, deterministic=deterministic))


def random_params(cfg: ModelConfig, seed: int = 0):
    """Numpy-drawn parameters of `cfg`'s shapes (no init compile), latent weights in (-1, 1)."""
    shapes = jax.eval_shape(functools.partial(init_params, cfg), RNG)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.uniform(-0.3, 0.3, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def tiny_params():
    # Real initialisation is exercised by the training test; here any values do.
    return random_params(TINY)


# Most tests share this batch shape [4, 9], so the tiny forward compiles once for them.
LENGTHS, LENGTH = [9, 6, 3, 8], 9


def run(cfg: ModelConfig, params, inputs: dict[str, np.ndarray], seed: int = 0) -> jax.Array:
    """Deterministic forward. It is always given a dropout rng, which it must ignore; that keeps
    one compile per config and batch shape."""
    rngs = {"dropout": jax.random.key(seed)}
    return forward(cfg)(
        {"params": params}, inputs["input_ids"], inputs["segment_ids"], inputs["mask"], rngs=rngs
    )


def test_from_config_accepts_the_config_contract_and_rejects_unknown_keys():
    assert TINY.num_layers == 3 and TINY.type_vocab_size == 2 and TINY.num_classes == 2
    with pytest.raises(ValueError, match="Unknown model config keys"):
        ModelConfig.from_config({"vocab_size": 10, "num_classes": 2, "depth": 3})


def test_output_shape_tiny(tiny_params):
    logits = run(TINY, tiny_params, batch(0, LENGTHS, LENGTH))
    chex.assert_shape(logits, (3, 4, 2))
    chex.assert_tree_all_finite(logits)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("task=mnli,size=small", (6, 2, 3)), ("task=stsb,size=tiny", (3, 2, 1))],
)
def test_output_shape_from_config(arg, expected):
    cfg = model_config(arg)
    ids = jnp.zeros((2, 16), jnp.int32)
    params = jax.eval_shape(functools.partial(init_params, cfg), RNG)
    logits = jax.eval_shape(
        lambda p: BEExformer(cfg).apply({"params": p}, ids, ids, jnp.ones_like(ids)), params
    )
    assert logits.shape == expected
    # The L stages are stacked on a leading axis of size L.
    for leaf in jax.tree.leaves(params["stages"]):
        assert leaf.shape[0] == cfg.num_layers


def test_padding_invariance(tiny_params):
    short = batch(1, LENGTHS, LENGTH)
    logits = run(TINY, tiny_params, short)
    # Append 7 pad tokens, and put garbage ids and segments under the existing padding too.
    padded = {k: np.pad(v, ((0, 0), (0, 7))) for k, v in short.items()}
    pad = padded["mask"] == 0
    padded["input_ids"] = np.where(pad, 42, padded["input_ids"])
    padded["segment_ids"] = np.where(pad, 1, padded["segment_ids"])
    chex.assert_trees_all_close(run(TINY, tiny_params, padded), logits, atol=1e-5, rtol=0)
    # The check can fail: the same garbage counted as real tokens changes the logits.
    unmasked = dict(padded, mask=np.ones_like(padded["mask"]))
    assert float(jnp.max(jnp.abs(run(TINY, tiny_params, unmasked) - logits))) > 1e-3


@pytest.mark.parametrize(
    "overrides", [{"binarize": False}, {"slfn": False}, {"position": "alibi", "norm": "pre"}]
)
def test_variants_build_and_run(overrides):
    cfg = dataclasses.replace(TINY, **overrides)
    logits = run(cfg, random_params(cfg), batch(2, [6, 4], 6))  # Another shape: compiles anyway.
    chex.assert_shape(logits, (3, 2, 2))
    chex.assert_tree_all_finite(logits)
    assert float(jnp.std(logits)) > 0


def param_shapes(cfg: ModelConfig):
    return jax.eval_shape(functools.partial(init_params, cfg), RNG)


def test_param_tree_identical_binarize_on_off():
    on = param_shapes(TINY)
    off = param_shapes(dataclasses.replace(TINY, binarize=False))
    chex.assert_trees_all_equal_structs(on, off)
    chex.assert_trees_all_equal_shapes_and_dtypes(on, off)
    paths = {
        "/".join(str(k.key) for k in path): bz.is_binary_path(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(on)[0]
    }
    # Binarized (docs/method.md §1): token table, Q/K/V/O, 4 SLFN layers, the exits' hidden layers.
    assert sum(paths.values()) == 1 + 4 + 4 + 1
    assert paths["embed/token/binary_embedding"]
    assert paths["stages/exit/hidden/binary_kernel"]
    # Kept in float: the logit layer, positions, norms, biases.
    assert not paths["stages/exit/logits/kernel"]
    assert not paths["embed/position_embedding"]


def test_ffn_ablation_swaps_slfn_for_ffn():
    stage = param_shapes(dataclasses.replace(TINY, slfn=False))["stages"]["block"]
    assert "slfn" not in stage and set(stage["ffn"]) == {"ffn_in", "ffn_out"}
    chex.assert_shape(stage["ffn"]["ffn_in"][bz.BINARY_KERNEL], (3, 32, 128))


def test_dropout_only_when_not_deterministic(tiny_params):
    inputs = batch(3, LENGTHS, LENGTH)
    args = ({"params": tiny_params}, inputs["input_ids"], inputs["segment_ids"], inputs["mask"])
    train = forward(TINY, deterministic=False)
    clean = run(TINY, tiny_params, inputs, seed=0)
    chex.assert_trees_all_equal(run(TINY, tiny_params, inputs, seed=1), clean)
    noisy = train(*args, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.max(jnp.abs(noisy - clean))) > 1e-3
    chex.assert_trees_all_equal(train(*args, rngs={"dropout": jax.random.key(1)}), noisy)
    assert float(jnp.max(jnp.abs(train(*args, rngs={"dropout": jax.random.key(2)}) - noisy))) > 0
    with pytest.raises(flax.errors.InvalidRngError):
        train(*args)


def test_stage_chain_equals_scan_forward(tiny_params):
    inputs = batch(4, LENGTHS, LENGTH)
    ids, segments, mask = inputs["input_ids"], inputs["segment_ids"], inputs["mask"]
    embed = jax.jit(Embedder(TINY).apply)({"params": tiny_params["embed"]}, ids, segments)

    @jax.jit
    def stage(params, index, h):  # The stage index is traced: one compile for every stage.
        return Stage(TINY).apply({"params": stage_params(params, index)}, h, mask)

    h, chained = embed, []
    for i in range(TINY.num_layers):
        h, logits = stage(tiny_params, jnp.int32(i), h)
        chained.append(logits)
    chex.assert_trees_all_close(
        jnp.stack(chained), run(TINY, tiny_params, inputs), atol=1e-5, rtol=1e-5
    )


def test_alibi_has_no_position_table_and_unknown_positions_are_refused():
    alibi = dataclasses.replace(TINY, position="alibi")
    assert "position_embedding" not in param_shapes(alibi)["embed"]
    assert "position_embedding" in param_shapes(TINY)["embed"]
    with pytest.raises(ValueError, match=r"Unknown model\.position 'rope'"):
        param_shapes(dataclasses.replace(TINY, position="rope"))


def test_embedder_rejects_too_long_inputs():
    ids = jnp.zeros((1, TINY.max_length + 1), jnp.int32)
    with pytest.raises(ValueError, match="exceeds max_length"):
        jax.eval_shape(Embedder(TINY).init, RNG, ids, ids)


@pytest.mark.slow  # About 20 s of CPU, nearly all of it compiling init and the update step.
def test_default_config_trains_on_random_tokens():
    config = glue.get_config()  # sst2, size small: the default.
    cfg = ModelConfig.from_config(config.model)
    model = BEExformer(cfg)
    rng = np.random.default_rng(5)
    ids = rng.integers(1, cfg.vocab_size, (16, 16)).astype(np.int32)
    segments, mask = np.zeros_like(ids), np.ones_like(ids)
    labels = rng.integers(0, cfg.num_classes, 16)

    def loss_fn(params):
        # Mean cross-entropy over the exits. Without dropout, so each step's loss is the exact
        # loss of the parameters it starts from (dropout has its own test above).
        logits = model.apply({"params": params}, ids, segments, mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[None]).mean()

    tx = optax.chain(
        optax.clip_by_global_norm(config.optim.grad_clip_norm),
        optax.adamw(config.optim.learning_rate, weight_decay=config.optim.weight_decay),
        bz.clip_latent_weights(),
    )

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.jit(init_params, static_argnums=(0, 2))(cfg, RNG)
    opt_state = tx.init(params)
    losses = []
    for _ in range(9):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(cfg.num_classes), rel=0.2)  # Starts near chance.
    assert losses[-1] < 0.8 * losses[0], losses
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if bz.is_binary_path(path):
            assert float(jnp.max(jnp.abs(leaf))) <= 1.0
