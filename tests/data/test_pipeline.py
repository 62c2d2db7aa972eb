"""grain pipeline: buckets, seeded epochs, process shards, exact resume, eval exactly once."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import data
from beex_jax.data import pipeline

KEYS = {
    "input_ids": np.int32,
    "segment_ids": np.int32,
    "mask": np.int32,
    "label": np.int32,
    "weight": np.float32,
    "idx": np.int32,
}


def take(iterator, n):
    """The next n batches."""
    return [next(iterator) for _ in range(n)]


def test_batch_format_and_bounded_shapes(sst2_input):
    """Per-process dict of numpy arrays; T is one of the bucket lengths, B the batch size."""
    assert sst2_input.steps_per_epoch == 2000 // 32 and sst2_input.vocab_size == 30522
    batches = take(sst2_input.train_iterator(0), sst2_input.steps_per_epoch)
    allowed = {16, 32, 64}  # (16, 32, 64, 128) capped at SST-2's max_length 64.
    for batch in batches:
        assert {k: v.dtype for k, v in batch.items()} == {k: np.dtype(v) for k, v in KEYS.items()}
        b, t = batch["input_ids"].shape
        assert b == 32 and t in allowed and batch["mask"].shape == batch["segment_ids"].shape
        lengths = batch["mask"].sum(1)
        assert (batch["input_ids"][np.arange(b), 0] == 101).all()  # [CLS]
        assert (batch["input_ids"][np.arange(b), lengths - 1] == 102).all()  # [SEP]
        assert (batch["input_ids"] * (1 - batch["mask"]) == 0).all()
        # Bucketed: the batch could not use the next smaller bucket.
        assert t == min(x for x in allowed if x >= lengths.max())
        assert (batch["weight"] == 1).all()
    lengths = np.concatenate([b["mask"].sum(1) for b in batches])
    padded = sum(b["mask"].size for b in batches)
    # Padding is close to the least the boundaries allow (each example in its own bucket) and far
    # below padding everything to max_length.
    least = sum(min(x for x in allowed if x >= n) for n in lengths)
    assert lengths.sum() / padded > 0.9 * lengths.sum() / least
    assert lengths.sum() / padded > 2 * lengths.sum() / (64 * len(lengths))


def test_epoch_drops_remainder_and_reshuffles(sst2_input):
    """One epoch uses each example at most once; the next epoch comes in another order."""
    it = sst2_input.train_iterator(0)
    steps = sst2_input.steps_per_epoch
    epoch0 = np.concatenate([b["idx"] for b in take(it, steps)])
    epoch1 = np.concatenate([b["idx"] for b in take(it, steps)])
    assert len(epoch0) == len(set(epoch0)) == steps * 32  # 2000 -> 1984: remainder dropped.
    assert set(epoch0) <= set(range(67349)) and not np.array_equal(epoch0, epoch1)
    again = np.concatenate([b["idx"] for b in take(sst2_input.train_iterator(0), steps)])
    np.testing.assert_array_equal(epoch0, again)  # Seeded.
    other = np.concatenate([b["idx"] for b in take(sst2_input.train_iterator(1), steps)])
    assert not np.array_equal(epoch0, other)


def test_state_restores_the_exact_next_batch(sst2_input):
    """get_state() is JSON; a new iterator set to it yields exactly what the old one would."""
    it = sst2_input.train_iterator(3)
    take(it, sst2_input.steps_per_epoch + 5)  # Cross an epoch boundary.
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 3)
    restored = sst2_input.train_iterator(3)
    restored.set_state(state)
    for want, got in zip(expected, take(restored, 3), strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(want[key], got[key])


def test_processes_read_disjoint_slices_of_the_global_batch(
    sst2_input, make_config, bert_vocab_file
):
    """Each of 2 processes gets half of every global batch, with the same T."""
    config = sst2_input.config
    shards = [
        pipeline.GlueInput(config, sst2_input.tokenizer, sst2_input._train, i, 2) for i in range(2)
    ]
    iterators = [shard.train_iterator(0) for shard in shards]
    for whole in take(sst2_input.train_iterator(0), 10):
        halves = [next(it) for it in iterators]
        assert all(h["input_ids"].shape == (16, whole["input_ids"].shape[1]) for h in halves)
        for key in KEYS:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    for shard in shards:
        assert shard.num_eval_batches("validation") == sst2_input.num_eval_batches("validation")


def test_eval_sees_every_example_once_with_padded_last_batch(sst2_input):
    """872 dev examples in 7 batches of 128: the last holds 104 real and 24 weight-0 ones."""
    batches = list(sst2_input.eval_batches("validation"))
    assert len(batches) == 7 and all(b["input_ids"].shape[0] == 128 for b in batches)
    weight = np.concatenate([b["weight"] for b in batches])
    idx = np.concatenate([b["idx"] for b in batches])
    assert sorted(idx[weight == 1]) == list(range(872)) and (idx[weight == 0] == -1).all()
    last = batches[-1]
    assert last["weight"].sum() == 872 - 6 * 128
    pad = last["weight"] == 0
    assert (last["mask"][pad].sum(1) == 2).all() and (last["label"][pad] == 0).all()
    labels = np.concatenate([b["label"] for b in batches])[weight == 1]
    assert set(labels) == {0, 1}
    test = list(sst2_input.eval_batches("test"))
    assert (
        np.concatenate([b["label"] for b in test])[np.concatenate([b["weight"] for b in test]) == 1]
        == -1
    ).all()


def test_max_eval_examples_and_pair_task(make_config, bert_vocab_file):
    """STS-B: pair inputs with segment ids, float labels, first N dev examples."""
    config = make_config(
        "stsb", vocab_file=str(bert_vocab_file), max_train_examples=100, max_eval_examples=50
    )
    config.batch_size, config.eval_batch_size = 8, 32
    stsb = data.create_input(config, process_index=0, process_count=1)
    assert stsb.num_train_examples == 100 and stsb.steps_per_epoch == 12
    batch = next(stsb.train_iterator())
    assert batch["label"].dtype == np.float32 and batch["segment_ids"].max() == 1
    batches = list(stsb.eval_batches("validation"))
    assert len(batches) == 2 and sum(b["weight"].sum() for b in batches) == 50


def test_overlong_examples_are_truncated_and_counted(make_config, bert_vocab_file, caplog):
    """RTE pairs longer than max_length are cut to it, and the count is logged."""
    config = make_config(
        "rte", vocab_file=str(bert_vocab_file), max_length=32, max_train_examples=200
    )
    with caplog.at_level(logging.INFO):
        rte = data.create_input(config, process_index=0, process_count=1)
    assert rte._train.length.max() == 32 and rte.allowed_lengths.tolist() == [16, 32]
    assert (
        "rte train: truncated" in caplog.text
        and "of 200 examples longer than max_length=32" in caplog.text
    )


def test_eval_split_names():
    """MNLI evaluates on matched and mismatched dev sets; the others on validation."""
    assert data.eval_split_names("sst2") == ("validation",)
    assert data.eval_split_names("mnli") == ("validation_matched", "validation_mismatched")


def test_create_input_rejects_unknown_task(make_config):
    """An unknown task lists the valid ones (ax is test-only)."""
    config = make_config("sst2")
    config.task = "ax"
    with pytest.raises(ValueError, match="valid tasks: sst2, cola"):
        data.create_input(config, process_index=0, process_count=1)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(2, 128), min_size=1, max_size=300),
    st.integers(1, 16),
    st.integers(0, 3),
    st.integers(1, 8),
)
def test_epoch_plan_is_a_drop_remainder_permutation(lengths, batch_size, epoch, window):
    """Any plan uses distinct examples, whole batches only, and sorts inside windows."""
    lengths = np.array(lengths)
    plan = pipeline.epoch_plan(lengths, batch_size, seed=0, epoch=epoch, window=window)
    assert plan.shape == (len(lengths) // batch_size, batch_size)
    assert len(set(plan.ravel())) == plan.size
    for row in plan:
        assert (np.diff(lengths[row]) >= 0).all()


@given(st.integers(0, 300), st.integers(1, 64))
def test_eval_plan_covers_each_example_once(n, batch_size):
    """Eval plans hold every example once and pad only the last batch."""
    plan = pipeline.eval_plan(np.arange(n) % 7, batch_size)
    assert sorted(plan[plan >= 0]) == list(range(n))
    assert (plan[:-1] >= 0).all() and plan.shape[0] == max(1, -(-n // batch_size))


def test_bucket_lengths_are_capped_at_max_length():
    """Boundaries above max_length are dropped; max_length is always allowed."""
    allowed = pipeline.padded_lengths((16, 32, 64, 128), 40)
    assert allowed.tolist() == [16, 32, 40]
    assert [pipeline.bucket_length(n, allowed) for n in (2, 16, 17, 33, 40)] == [16, 16, 32, 40, 40]
