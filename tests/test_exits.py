"""Tests for beex_jax.exits: entropy, exit signals and the online exit policies."""

from __future__ import annotations

import functools
import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import exits as ex

SETTINGS = settings(max_examples=15, deadline=None)


def logits_arrays(classes=(1, 2, 3)):
    """Strategy: float32 logits [L, B, C] of a few shapes (each one compiles the policy once)."""
    shape = st.tuples(st.sampled_from((1, 3, 6)), st.just(8), st.sampled_from(classes))
    elements = st.floats(-4, 4, width=32, allow_nan=False)
    return shape.flatmap(lambda s: hnp.arrays(np.float32, s, elements=elements))


# ---- Reference rules, written as plain loops over blocks (docs/method.md §3). ----


def _np_entropy(z):
    return float(scipy.stats.entropy(scipy.special.softmax(np.float64(z))))


def _np_signal(prev, cur):
    if cur.shape[-1] == 1:
        return abs(float(cur[0]) - float(prev[0])) / max(abs(float(prev[0])), ex.EPS)
    h_prev, h = _np_entropy(prev), _np_entropy(cur)
    return (h_prev - h) / max(h_prev, ex.EPS)


def reference_decisions(
    logits, *, policy, delta, min_exit_block, answer_from, threshold=0.3, patience=2
):
    """(exit_index, last_block) per example from a direct reading of the rules."""
    num_layers, batch, _ = logits.shape
    exit_index, last_block = [], []
    for b in range(batch):
        agree = 0
        for i in range(num_layers):
            z = logits[i, b]
            if policy == "entropy_reduction":
                fires = i >= 1 and _np_signal(logits[i - 1, b], z) < delta
            elif policy == "entropy_threshold":
                fires = _np_entropy(z) < threshold
            else:
                if i >= 1 and z.shape[-1] == 1:
                    same = _np_signal(logits[i - 1, b], z) < delta
                else:
                    same = i >= 1 and np.argmax(z) == np.argmax(logits[i - 1, b])
                agree = agree + 1 if same else 0
                fires = agree >= patience
            fires = fires and i + 1 >= min_exit_block
            if fires or i == num_layers - 1:
                answer = i - 1 if (fires and answer_from == "previous") else i
                exit_index.append(answer)
                last_block.append(i)
                break
    return np.array(exit_index), np.array(last_block)


def _far_from_thresholds(logits, delta, threshold=None, margin=1e-4) -> bool:
    """True when no signal / entropy sits within `margin` of its threshold (float32 vs float64)."""
    num_layers, batch, _ = logits.shape
    for b in range(batch):
        for i in range(num_layers):
            if i >= 1 and abs(_np_signal(logits[i - 1, b], logits[i, b]) - delta) < margin:
                return False
            if threshold is not None and abs(_np_entropy(logits[i, b]) - threshold) < margin:
                return False
    return True


# ---- Entropy and signals. ----


def test_entropy_of_uniform_and_peaked():
    chex.assert_trees_all_close(ex.entropy(jnp.zeros((4, 3))), jnp.full((4,), math.log(3)))
    assert float(ex.entropy(jnp.array([100.0, -100.0]))) < 1e-6


@SETTINGS
@given(hnp.arrays(np.float32, (5, 4), elements=st.floats(-10, 10, width=32)))
def test_entropy_matches_scipy(z):
    expected = np.array([_np_entropy(row) for row in z])
    np.testing.assert_allclose(ex.entropy(jnp.asarray(z)), expected, rtol=1e-4, atol=1e-5)


def test_fractional_entropy_reduction_values():
    r = ex.fractional_entropy_reduction(jnp.array([1.0, 0.5, 0.0]), jnp.array([0.75, 1.0, 0.0]))
    chex.assert_trees_all_close(r, jnp.array([0.25, -1.0, 0.0]))


def test_exit_signal_uses_fractional_change_for_regression():
    r = ex.exit_signal(jnp.array([[2.0], [-4.0]]), jnp.array([[2.5], [-3.0]]))
    chex.assert_trees_all_close(r, jnp.array([0.25, 0.25]))


# ---- Policies against the loop reference. ----


@SETTINGS
@given(
    logits=logits_arrays(),
    delta=st.floats(-0.5, 0.5),
    min_exit_block=st.integers(2, 4),
    answer_from=st.sampled_from(ex.ANSWER_FROM),
)
def test_exit_decisions_match_reference(logits, delta, min_exit_block, answer_from):
    if not _far_from_thresholds(logits, delta):
        return
    got = ex.exit_decisions(
        jnp.asarray(logits), delta=delta, min_exit_block=min_exit_block, answer_from=answer_from
    )
    expected, _ = reference_decisions(
        logits,
        policy="entropy_reduction",
        delta=delta,
        min_exit_block=min_exit_block,
        answer_from=answer_from,
    )
    np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(
    logits=logits_arrays(classes=(2, 3)),
    policy=st.sampled_from(ex.POLICIES),
    delta=st.floats(-0.3, 0.3),
    threshold=st.floats(0.05, 1.0),
    patience=st.integers(1, 3),
    min_exit_block=st.integers(1, 3),
    answer_from=st.sampled_from(ex.ANSWER_FROM),
)
def test_every_policy_matches_reference(
    logits, policy, delta, threshold, patience, min_exit_block, answer_from
):
    if answer_from == "previous":
        min_exit_block = max(min_exit_block, 2)
    if not _far_from_thresholds(logits, delta, threshold):
        return
    config = ex.ExitConfig(
        delta=delta,
        min_exit_block=min_exit_block,
        entropy_threshold=threshold,
        patience=patience,
        policy=policy,
        answer_from=answer_from,
    ).validate()
    decision = ex.apply_policy(jnp.asarray(logits), config)
    expected_exit, expected_last = reference_decisions(
        logits,
        policy=policy,
        delta=delta,
        min_exit_block=min_exit_block,
        answer_from=answer_from,
        threshold=threshold,
        patience=patience,
    )
    np.testing.assert_array_equal(decision.exit_index, expected_exit)
    np.testing.assert_array_equal(decision.last_block, expected_last)
    np.testing.assert_array_equal(
        ex.last_block_run(decision.exit_index, logits.shape[0], answer_from), expected_last
    )


@SETTINGS
@given(
    logits=logits_arrays(),
    noise=st.integers(0, 2**31 - 1),
    policy=st.sampled_from(ex.POLICIES),
    answer_from=st.sampled_from(ex.ANSWER_FROM),
)
def test_policies_are_online(logits, noise, policy, answer_from):
    """Changing the logits after an example's last block never changes its decision."""
    if policy == "entropy_threshold" and logits.shape[-1] == 1:
        return
    config = ex.ExitConfig(delta=0.0, policy=policy, answer_from=answer_from).validate()
    decision = ex.apply_policy(jnp.asarray(logits), config)
    later = np.arange(logits.shape[0])[:, None] > np.asarray(decision.last_block)[None, :]
    scrambled = np.where(
        later[..., None], np.random.default_rng(noise).normal(size=logits.shape) * 5, logits
    ).astype(np.float32)
    again = ex.apply_policy(jnp.asarray(scrambled), config)
    np.testing.assert_array_equal(again.exit_index, decision.exit_index)
    np.testing.assert_array_equal(again.last_block, decision.last_block)


@SETTINGS
@given(
    logits=logits_arrays(),
    min_exit_block=st.integers(2, 7),
    answer_from=st.sampled_from(ex.ANSWER_FROM),
)
def test_extreme_deltas(logits, min_exit_block, answer_from):
    """delta = -inf: nobody exits early; delta = +inf: everybody exits at min_exit_block."""
    num_layers, batch, _ = logits.shape
    decide = functools.partial(
        ex.exit_decisions,
        jnp.asarray(logits),
        min_exit_block=min_exit_block,
        answer_from=answer_from,
    )
    np.testing.assert_array_equal(decide(delta=-np.inf), np.full(batch, num_layers - 1))
    first = min(min_exit_block, num_layers) - 1
    if answer_from == "previous" and min_exit_block <= num_layers:
        first -= 1  # The rule fired at block min_exit_block: the previous block answers.
    np.testing.assert_array_equal(decide(delta=np.inf), np.full(batch, first))


def test_exit_decisions_jit_with_traced_delta():
    logits = jax.random.normal(jax.random.key(0), (4, 16, 2))
    decide = jax.jit(lambda z, d: ex.exit_decisions(z, delta=d))
    for delta in (-1.0, 0.0, 0.05, 1.0):
        np.testing.assert_array_equal(decide(logits, delta), ex.exit_decisions(logits, delta=delta))
    assert decide(logits, 1.0).dtype == jnp.int32


def test_gather_exit():
    logits = jnp.arange(3 * 2 * 2, dtype=jnp.float32).reshape(3, 2, 2)
    chex.assert_trees_all_equal(
        ex.gather_exit(logits, jnp.array([2, 0])), jnp.stack([logits[2, 0], logits[0, 1]])
    )


def test_prediction_classification_and_regression():
    chex.assert_trees_all_equal(
        ex.prediction(jnp.array([[0.0, 1.0], [2.0, 1.0]])), jnp.array([1, 0], jnp.int32)
    )
    chex.assert_trees_all_equal(ex.prediction(jnp.array([[3.5]])), jnp.array([3.5]))


def test_exit_config_from_config_and_validation():
    from configs import glue

    config = ex.ExitConfig.from_config(glue.get_config("size=tiny").exit)
    assert config.policy == "entropy_reduction" and config.chunk_size == 0  # 0: auto.
    with pytest.raises(ValueError, match="chunk_size"):
        ex.ExitConfig(chunk_size=-1).validate()
    with pytest.raises(ValueError, match="policy"):
        ex.ExitConfig(policy="nope").validate()
    with pytest.raises(ValueError, match="answer_from"):
        ex.ExitConfig(answer_from="next").validate()
    with pytest.raises(ValueError, match="min_exit_block"):
        ex.ExitConfig(min_exit_block=1, answer_from="previous").validate()
    with pytest.raises(ValueError, match="Unknown exit config keys"):
        ex.ExitConfig.from_config({"delta": 0.1, "bogus": 1})
    with pytest.raises(ValueError, match="entropy_threshold"):
        ex.apply_policy(jnp.zeros((3, 2, 1)), ex.ExitConfig(policy="entropy_threshold"))
