"""Tests for beex_jax.early_exit: compacted early-exit inference equals the full-depth reference.

Both paths compute each example's logits independently of the others, but XLA may sum a matmul
in a different order for a chunk of rows than for the whole batch (last-bit differences, ~1e-7).
An exit decision can only flip when a signal sits that close to its threshold, so equality is
asserted exactly on every example whose decisions are not within 1e-5 of a threshold (in practice
all of them; the test also requires that almost all are).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import early_exit, flops
from beex_jax import exits as ex
from beex_jax.model import ModelConfig, init_params
from configs import glue

NUM_LAYERS = 4
LENGTH = 16
KNIFE_EDGE = 1e-5


def make_config(**exit_overrides):
    """Tiny config (4 blocks, small vocabulary) with `config.exit` overrides."""
    config = glue.get_config("size=tiny").unlock()
    config.model.num_layers = NUM_LAYERS
    config.model.vocab_size = 100
    # float32: chunks of other sizes then give the same logits to 1e-5 (with bf16 dot operands,
    # "auto" on a CPU with bf16 dots, GEMM kernels chosen by shape differ by ~1e-3;
    # tests/test_mixed_precision.py bounds that).
    config.model.dtype = "float32"
    for key, value in exit_overrides.items():
        config.exit[key] = value
    return config


def block_rows(active: int, chunk: int, tail_split: int = ex.ExitConfig.tail_split) -> int:
    """Rows one block computes for `active` examples: whole chunks, then the rest in chunks
    `tail_split` times smaller (for a power-of-two chunk)."""
    tail = max(1, chunk // tail_split) if chunk & (chunk - 1) == 0 else chunk
    rest = active - active // chunk * chunk
    return active // chunk * chunk + -(-rest // tail) * tail


@functools.cache
def model_params(num_classes: int = 2):
    """Parameters of the tiny model (cached: initialising compiles)."""
    if num_classes == 1:  # Regression: keep one output of the classifier's exit heads.
        params = model_params(2)
        head = params["stages"]["exit"]["logits"]
        logits = {"kernel": head["kernel"][..., :1], "bias": head["bias"][..., :1]}
        return {
            **params,
            "stages": {**params["stages"], "exit": {**params["stages"]["exit"], "logits": logits}},
        }
    model_config = ModelConfig.from_config(make_config().model)
    return jax.jit(init_params, static_argnums=(0, 2))(model_config, jax.random.key(1), LENGTH)


def make_batch(batch_size: int, seed: int, length: int = LENGTH) -> dict[str, np.ndarray]:
    """Random tokens with mixed real lengths 1..length."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, batch_size)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, 100, (batch_size, length)) * mask).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": mask}


def decisive_examples(all_logits: jax.Array, exit_config: ex.ExitConfig) -> np.ndarray:
    """[B] bool: examples whose decisions and answer do not move when thresholds move by 1e-5."""
    decision = ex.apply_policy(all_logits, exit_config)
    stable = np.ones(all_logits.shape[1], bool)
    for shift in (-KNIFE_EDGE, KNIFE_EDGE):
        moved = ex.apply_policy(
            all_logits,
            exit_config.replace(
                delta=exit_config.delta + shift,
                entropy_threshold=exit_config.entropy_threshold + shift,
            ),
        )
        stable &= np.asarray(moved.exit_index == decision.exit_index)
        stable &= np.asarray(moved.last_block == decision.last_block)
    if all_logits.shape[-1] > 1:  # Argmax near-ties (answers and patience's agreements).
        top2 = jnp.sort(all_logits, axis=-1)[..., -2:]
        stable &= np.asarray(jnp.min(top2[..., 1] - top2[..., 0], axis=0) > KNIFE_EDGE)
    return stable


def reference_predictions(config, params, batch) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """docs/method.md §3 spelled out: all blocks, policy per exit, gather; and decisive examples."""
    model_config = ModelConfig.from_config(config.model)
    exit_config = ex.ExitConfig.from_config(config.exit)
    all_logits = early_exit.full_depth_logits(
        params, batch["input_ids"], batch["segment_ids"], batch["mask"], model_config=model_config
    )
    decision = ex.apply_policy(all_logits, exit_config)
    logits = ex.gather_exit(all_logits, decision.exit_index)
    lengths = jnp.sum(batch["mask"], axis=-1)
    reference = {
        "logits": logits,
        "prediction": ex.prediction(logits),
        "exit_index": decision.exit_index,
        "last_block": decision.last_block,
        "flops": flops.per_example_flops(model_config, lengths, decision.last_block),
    }
    return jax.tree.map(np.asarray, reference), decisive_examples(all_logits, exit_config)


def assert_same_predictions(config, params, batch, *, min_decisive=0.95):
    """Early exit == reference on every decisive example; returns (outputs, work)."""
    early, work = early_exit.predict_early_exit(params, batch, config, with_work=True)
    reference, keep = reference_predictions(config, params, batch)
    assert keep.mean() >= min_decisive, keep.mean()
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.tree.map(np.asarray, early), reference)
    exact = ("exit_index", "last_block", "flops")
    if config.model.num_classes > 1:
        exact += ("prediction",)
    for key in exact:
        np.testing.assert_array_equal(np.asarray(early[key])[keep], reference[key][keep], key)
    np.testing.assert_allclose(early["prediction"], reference["prediction"], atol=1e-5)
    np.testing.assert_allclose(early["logits"], reference["logits"], atol=1e-5)
    return early, work


BATCH_SIZES = (1, 7, 64, 257)


@settings(max_examples=12, deadline=None)
@given(
    batch_size=st.sampled_from(BATCH_SIZES),
    seed=st.integers(0, 2**16),
    delta=st.one_of(st.sampled_from((-np.inf, np.inf)), st.floats(-0.05, 0.05)),
    min_exit_block=st.sampled_from((2, 3)),
)
def test_matches_full_depth_reference(batch_size, seed, delta, min_exit_block):
    config = make_config(delta=delta, min_exit_block=min_exit_block)
    assert_same_predictions(config, model_params(), make_batch(batch_size, seed))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_extreme_deltas_and_skipped_work(batch_size):
    """delta = -inf: all blocks for everyone; +inf: everyone stops at min_exit_block, early."""
    batch = make_batch(batch_size, seed=batch_size)
    chunk = early_exit.exit_chunk_rows(ex.ExitConfig(), batch_size, LENGTH)
    for delta, blocks in ((-np.inf, NUM_LAYERS), (np.inf, 2)):
        early, work = assert_same_predictions(
            make_config(delta=delta), model_params(), batch, min_decisive=1.0
        )
        np.testing.assert_array_equal(early["exit_index"], np.full(batch_size, blocks - 1))
        assert int(work["blocks_run"]) == blocks
        assert int(work["rows_run"]) == blocks * block_rows(batch_size, chunk)


@pytest.mark.parametrize("tail_split", (1, 2, 4))
def test_rows_run_follow_the_active_prefix(tail_split):
    """Each block runs the examples still going: whole chunks, then the rest in smaller ones
    (tail_split 1: ceil(active / chunk) whole chunks); the predictions do not change."""
    batch_size, chunk = 23, 4
    config = make_config(delta=0.0, chunk_size=chunk, tail_split=tail_split)
    early, work = assert_same_predictions(config, model_params(), make_batch(batch_size, 5))
    last_block = np.asarray(early["last_block"])
    active = [(last_block >= b).sum() for b in range(NUM_LAYERS)]
    assert 0 < active[-1] < batch_size  # Some, not all, reach the last block.
    want = sum(block_rows(a, chunk, tail_split) for a in active if a)
    assert int(work["rows_run"]) == want
    if tail_split > 1:  # Fewer rows than whole chunks, whenever a block ends inside one.
        assert want < sum(-(-a // chunk) * chunk for a in active if a)
    assert int(work["blocks_run"]) == last_block.max() + 1


def test_tail_split_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="tail_split must be a power of two"):
        ex.ExitConfig(tail_split=3).validate()


def test_result_independent_of_chunk_composition():
    """Permuting the batch (so other examples share each chunk) changes nobody's result.

    Other chunk sizes are covered by the reference tests (chunk 4 at batch 23, 1 at batch 1, 7 at
    batch 7, 32 at batches 64 and 257).
    """
    params, batch = model_params(), make_batch(23, 7)
    order = np.random.default_rng(0).permutation(23)
    permuted = {k: v[order] for k, v in batch.items()}
    config = make_config(delta=0.0, chunk_size=4)
    outputs = jax.tree.map(np.asarray, early_exit.predict_early_exit(params, batch, config))
    again = early_exit.predict_early_exit(params, permuted, config)
    for key in ("exit_index", "prediction", "last_block"):
        np.testing.assert_array_equal(again[key], outputs[key][order])
    np.testing.assert_allclose(again["logits"], outputs["logits"][order], atol=1e-5)


def test_predict_full_depth_is_the_reference():
    config = make_config(delta=0.0)
    batch = make_batch(7, 2)
    got = early_exit.predict_full_depth(model_params(), batch, config)
    reference, _ = reference_predictions(config, model_params(), batch)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), reference)


@pytest.mark.parametrize(
    ("policy", "answer_from", "min_exit_block"),
    [
        ("entropy_reduction", "previous", 2),
        ("entropy_threshold", "current", 1),
        ("patience", "previous", 2),
    ],
)
def test_every_policy_matches_reference(policy, answer_from, min_exit_block):
    config = make_config(
        policy=policy,
        answer_from=answer_from,
        min_exit_block=min_exit_block,
        delta=0.0,
        entropy_threshold=0.69,
        patience=1,
        chunk_size=4,
    )
    early, _ = assert_same_predictions(config, model_params(), make_batch(23, 11))
    assert len(np.unique(early["exit_index"])) > 1  # The policy really splits the batch.


def test_regression_exits_on_fractional_change():
    config = make_config(delta=0.3, chunk_size=4)
    config.model.num_classes = 1
    early, _ = assert_same_predictions(config, model_params(num_classes=1), make_batch(23, 3))
    assert early["prediction"].dtype == jnp.float32
    np.testing.assert_array_equal(early["prediction"], early["logits"][:, 0])


def test_flops_follow_the_last_block():
    config = make_config(delta=np.inf)
    batch = make_batch(7, 1)
    early = early_exit.predict_early_exit(model_params(), batch, config)
    full = early_exit.predict_early_exit(model_params(), batch, make_config(delta=-np.inf))
    # Stopping after block 2 of 4 costs half of the stages.
    np.testing.assert_allclose(early["flops"], 0.5 * np.asarray(full["flops"]), rtol=1e-6)


def test_chunk_rows_from_batch_length_and_device():
    """CPU: about chunk_tokens tokens a chunk; accelerators: the whole batch; powers of two."""
    rows = functools.partial(early_exit.chunk_rows, chunk_tokens=1024, platform="cpu")
    assert rows(256, 32) == 32 and rows(256, 64) == 16 and rows(32, 32) == 32
    assert rows(1, 128) == 1 and rows(5, 16) == 5  # A batch smaller than a chunk is one chunk.
    assert rows(256, 48) == 16  # 1024 // 48 = 21, rounded down to a power of two.
    assert early_exit.chunk_rows(256, 64, chunk_tokens=1024, platform="gpu") == 256
    # Early exit splits even small batches, so that exited examples stop costing work.
    assert rows(8, 32, min_chunks=8) == 1 and rows(32, 32, min_chunks=8) == 4
    assert rows(256, 32, min_chunks=8) == 32
    assert early_exit.chunk_rows(256, 64, min_chunks=8, platform="tpu") == 32
    auto = ex.ExitConfig()
    assert early_exit.exit_chunk_rows(auto, 8, 32) == rows(8, 32, min_chunks=auto.min_chunks)
    assert early_exit.exit_chunk_rows(auto.replace(chunk_size=32), 8, 32) == 8


@pytest.mark.parametrize("batch_size", (2, 8, 32))
def test_small_batches_skip_exited_examples(batch_size):
    """With the chunk chosen from the batch, a batch of 2-32 stops computing exited examples."""
    config = make_config(delta=0.0)  # chunk_size 0: chosen from the batch.
    early, work = assert_same_predictions(config, model_params(), make_batch(batch_size, 3))
    last_block = np.asarray(early["last_block"])
    assert len(np.unique(last_block)) > 1  # Part of the batch exits early.
    chunk = early_exit.exit_chunk_rows(ex.ExitConfig(), batch_size, LENGTH)
    assert chunk < batch_size
    active = [(last_block >= b).sum() for b in range(NUM_LAYERS)]
    assert int(work["rows_run"]) == sum(block_rows(a, chunk) for a in active if a)
    assert int(work["rows_run"]) < batch_size * int(work["blocks_run"])  # Work was saved.


@pytest.mark.parametrize(("batch_size", "chunk"), [(23, 4), (64, 16), (5, 8)])
def test_full_depth_in_chunks_equals_one_pass(batch_size, chunk):
    """Running a large batch as a loop over chunks (padded to whole chunks) changes no logit."""
    model_config = ModelConfig.from_config(make_config().model)
    batch = make_batch(batch_size, seed=chunk)
    args = (model_params(), batch["input_ids"], batch["segment_ids"], batch["mask"])
    chunked = early_exit.full_depth_logits(*args, model_config=model_config, chunk_size=chunk)
    whole = early_exit.full_depth_logits(*args, model_config=model_config, chunk_size=batch_size)
    chex.assert_shape(chunked, (NUM_LAYERS, batch_size, 2))
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_padding_rows_past_num_rows_are_skipped():
    """Rows from num_rows on are padding: no chunk past the last real row runs, in either path."""
    model_config = ModelConfig.from_config(make_config().model)
    config = make_config(delta=0.0, chunk_size=4)
    batch, num_rows = make_batch(16, seed=9), 5
    args = (model_params(), batch["input_ids"], batch["segment_ids"], batch["mask"])
    whole = early_exit.full_depth_logits(*args, model_config=model_config, chunk_size=4)
    part = early_exit.full_depth_logits(
        *args, model_config=model_config, chunk_size=4, num_rows=jnp.int32(num_rows)
    )
    np.testing.assert_array_equal(part[:, :num_rows], whole[:, :num_rows])
    np.testing.assert_array_equal(part[:, 8:], 0.0)  # Chunks 2 and 3 never ran.
    exit_config = ex.ExitConfig.from_config(config.exit)
    outputs, work = early_exit.early_exit_forward(
        *args, exit_config, model_config=model_config, num_rows=num_rows
    )
    real = {k: v[:num_rows] for k, v in batch.items()}
    early, _ = assert_same_predictions(config, model_params(), real)
    for key in ("exit_index", "last_block", "prediction"):
        np.testing.assert_array_equal(outputs[key][:num_rows], early[key])
    last_block = np.asarray(early["last_block"])
    active = [(last_block >= b).sum() for b in range(NUM_LAYERS)]
    assert int(work["rows_run"]) == sum(block_rows(a, 4) for a in active if a)
