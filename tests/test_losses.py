"""Tests for beex_jax.losses: soft routing, mean and weighted exit losses (docs/method.md §4)."""

from __future__ import annotations

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import losses
from beex_jax.model import BEExformer, ModelConfig, init_params
from configs import glue

SETTINGS = settings(max_examples=20, deadline=None)


@SETTINGS
@given(
    r=st.sampled_from((1, 2, 6)).flatmap(
        lambda n: hnp.arrays(np.float32, (n, 5), elements=st.floats(-3, 3, width=32))
    ),
    delta=st.floats(-0.5, 0.5),
    tau=st.floats(0.01, 1.0),
)
def test_exit_probabilities_sum_to_one(r, delta, tau):
    q = losses.soft_exit_probabilities(jnp.asarray(r), delta=delta, tau=tau)
    chex.assert_shape(q, r.shape)
    assert np.all(np.asarray(q) >= 0)
    np.testing.assert_allclose(np.sum(q, axis=0), 1.0, atol=1e-5)
    if r.shape[0] > 1:
        np.testing.assert_array_equal(q[0], 0.0)  # s_1 = 0: nobody exits at the first block.


def test_exit_probabilities_formula():
    r = np.array([[9.0], [0.3], [-0.1], [0.2]], np.float32)
    delta, tau = 0.1, 0.1
    s = scipy.special.expit((delta - r[:, 0]) / tau)
    s[0], s[-1] = 0.0, 1.0
    expected = [s[i] * np.prod(1 - s[:i]) for i in range(4)]
    q = losses.soft_exit_probabilities(jnp.asarray(r), delta=delta, tau=tau)
    np.testing.assert_allclose(q[:, 0], expected, rtol=1e-5)


def _random_problem(seed, num_layers=4, batch=6, num_classes=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_layers, batch, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(labels)


def _np_ce(logits, labels):
    log_p = scipy.special.log_softmax(np.float64(logits), axis=-1)
    return -np.take_along_axis(log_p, np.asarray(labels)[None, :, None], axis=-1)[..., 0]


def test_variants_match_formulas():
    logits, labels = _random_problem(0)
    weights = jnp.ones(labels.shape)
    ce = _np_ce(logits, labels)  # [L, B]
    i = np.arange(1, 5)[:, None]
    call = functools.partial(losses.exit_loss, logits, labels, weights, num_classes=3)
    np.testing.assert_allclose(call(name="mean")[0], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        call(name="weighted")[0], np.mean((i * ce).sum(0) / i.sum()), rtol=1e-5
    )
    q = np.asarray(losses.soft_exit_probabilities(losses.exit_signals(logits), delta=0.1, tau=0.1))
    expected = np.mean((q * ce).sum(0) + 0.5 * ce.mean(0))
    loss, metrics = call(name="soft_routing", delta=0.1, tau=0.1, lam=0.5)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_per_exit"], ce.mean(1), rtol=1e-5)
    correct = np.argmax(logits, -1) == np.asarray(labels)[None]
    np.testing.assert_allclose(metrics["accuracy_per_exit"], correct.mean(1), rtol=1e-6)
    np.testing.assert_allclose(metrics["exit_probability"].sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_padding_examples_count_zero(name):
    logits, labels = _random_problem(1)
    weights = jnp.ones(labels.shape)
    loss, metrics = losses.exit_loss(logits, labels, weights, name=name, num_classes=3)
    junk_logits, junk_labels = _random_problem(2)
    padded_logits = jnp.concatenate([logits, junk_logits * 10], axis=1)
    padded_labels = jnp.concatenate([labels, junk_labels])
    padded_weights = jnp.concatenate([weights, jnp.zeros(junk_labels.shape)])
    loss2, metrics2 = losses.exit_loss(
        padded_logits, padded_labels, padded_weights, name=name, num_classes=3
    )
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    chex.assert_trees_all_close(metrics2, metrics, rtol=1e-5)


def test_regression_uses_squared_error_and_fractional_change():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.uniform(0, 5, size=(3, 4, 1)).astype(np.float32))
    labels = jnp.asarray(rng.uniform(0, 5, size=4).astype(np.float32))
    weights = jnp.ones(4)
    sq = (np.asarray(logits)[..., 0] - np.asarray(labels)[None]) ** 2
    loss, metrics = losses.exit_loss(logits, labels, weights, name="mean", num_classes=1)
    np.testing.assert_allclose(loss, sq.mean(), rtol=1e-5)
    assert "accuracy_per_exit" not in metrics
    y = np.asarray(logits)[..., 0]
    change = np.abs(y[1:] - y[:-1]) / np.abs(y[:-1])
    np.testing.assert_allclose(losses.exit_signals(logits)[1:], change, rtol=1e-5)


def test_unknown_loss_name():
    logits, labels = _random_problem(0)
    with pytest.raises(ValueError, match="Unknown loss"):
        losses.exit_loss(logits, labels, jnp.ones(6), name="max", num_classes=3)


VARIANTS = (("soft_routing", 1.0), ("soft_routing", 0.0), ("mean", 1.0), ("weighted", 1.0))


@pytest.mark.parametrize(("name", "lam"), VARIANTS)
def test_every_exit_receives_gradient(name, lam):
    """Even exit 1 (q_1 = 0) gets gradient under soft routing with lam = 0, through q."""
    logits, labels = _random_problem(4)
    g = jax.grad(
        lambda z: losses.exit_loss(z, labels, jnp.ones(6), name=name, lam=lam, num_classes=3)[0]
    )(logits)
    assert np.all(np.isfinite(g))
    assert np.all(np.abs(np.asarray(g)).sum(axis=(1, 2)) > 0)


@pytest.fixture(scope="module")
def tiny_model():
    config = glue.get_config("size=tiny").unlock()
    config.model.vocab_size = 64
    model_config = ModelConfig.from_config(config.model)
    params = jax.jit(init_params, static_argnums=(0, 2))(model_config, jax.random.key(0), 16)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 64, (8, 16)).astype(np.int32))
    mask = jnp.asarray((np.arange(16)[None] < rng.integers(2, 17, 8)[:, None]).astype(np.int32))
    labels = jnp.asarray(rng.integers(0, 2, 8).astype(np.int32))
    return model_config, params, (ids, jnp.zeros_like(ids), mask, labels)


def test_every_block_receives_gradient(tiny_model):
    """Each variant sends a nonzero, finite gradient to every block and to the embedding."""
    model_config, params, (ids, segments, mask, labels) = tiny_model

    def global_norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))

    @jax.jit
    def gradient_norms(params):
        """[variant, block] gradient norms of the blocks, and [variant] of the embedding."""

        def forward(params):
            return BEExformer(model_config).apply({"params": params}, ids, segments, mask)

        all_logits, pullback = jax.vjp(forward, params)
        # d loss / d logits of each variant, pulled back through one (vmapped) backward pass.
        cotangents = jnp.stack(
            [
                jax.grad(
                    lambda z, name=name, lam=lam: losses.exit_loss(
                        z,
                        labels,
                        jnp.ones(labels.shape),
                        name=name,
                        lam=lam,
                        num_classes=model_config.num_classes,
                    )[0]
                )(all_logits)
                for name, lam in VARIANTS
            ]
        )
        (g,) = jax.vmap(pullback)(cotangents)
        blocks = jax.vmap(jax.vmap(global_norm))(g["stages"]["block"])
        return blocks, jax.vmap(global_norm)(g["embed"])

    blocks, embed = (np.asarray(x) for x in gradient_norms(params))
    assert np.all(np.isfinite(blocks)) and np.all(np.isfinite(embed))
    for (name, lam), block_norms, embed_norm in zip(VARIANTS, blocks, embed, strict=True):
        assert np.all(block_norms > 0), (name, lam, block_norms)
        assert embed_norm > 0, (name, lam)


def test_single_exit_model_routes_everything_to_its_only_exit():
    logits = jnp.zeros((1, 4, 2))
    loss, metrics = losses.exit_loss(
        logits, jnp.zeros(4, jnp.int32), jnp.ones(4), name="soft_routing", num_classes=2
    )
    np.testing.assert_allclose(metrics["exit_probability"], [1.0])
    np.testing.assert_allclose(loss, 2 * np.log(2), rtol=1e-6)  # q-term + lam * mean term.
