"""MLM pretraining: masking, tied head, corpus packing and dedup, init_from, resume, end to end."""

from __future__ import annotations

import json
import pathlib
import random
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import training_runs
from hypothesis import given, settings
from hypothesis import strategies as st

from beex_jax import binarize as bz
from beex_jax import corruption, init_from, mlm
from beex_jax.data import corpus
from beex_jax.model import BEExformer, ModelConfig, init_params
from configs import glue

SPECIALS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK] of a learned vocabulary.


def test_bert_mask_statistics():
    rows, length, vocab, k = 4000, 32, 50, 5
    ids = jax.random.randint(jax.random.PRNGKey(0), (rows, length), 5, vocab)
    ids = ids.at[:, 0].set(2).at[:, -1].set(3)
    mask = jnp.ones_like(ids)
    out = corruption.bert_mask(
        jax.random.PRNGKey(1),
        ids,
        mask,
        num_predictions=k,
        mask_id=4,
        special_ids=SPECIALS,
        vocab_size=vocab,
    )
    positions, targets = np.asarray(out["positions"]), np.asarray(out["targets"])
    corrupted = np.asarray(out["input_ids"])
    assert positions.shape == (rows, k) and np.all(np.asarray(out["weights"]) == 1)
    assert all(len(set(row)) == k for row in positions[:100])  # k distinct positions per row.
    assert not np.isin(positions, [0, length - 1]).any()  # Never [CLS] or [SEP].
    np.testing.assert_array_equal(targets, np.take_along_axis(np.asarray(ids), positions, 1))
    picked = np.take_along_axis(corrupted, positions, 1)
    masked = picked == 4
    kept = picked == targets
    assert abs(masked.mean() - 0.8) < 0.01
    assert abs(kept.mean() - (0.1 + 0.1 / (vocab - 5))) < 0.01  # Kept, or random = original.
    assert np.all(picked[~masked] >= 5)  # Random replacements are never special tokens.
    untouched = np.ones_like(corrupted, bool)
    np.put_along_axis(untouched, positions, False, 1)
    np.testing.assert_array_equal(corrupted[untouched], np.asarray(ids)[untouched])
    # Uniform choice: every word position is picked about equally often.
    counts = np.bincount(positions.ravel(), minlength=length)[1:-1]
    assert counts.min() > 0.8 * counts.mean()


def test_bert_mask_rows_with_few_words_weight_their_extra_picks_zero():
    ids = jnp.array([[2, 7, 3, 0, 0, 0], [2, 7, 8, 9, 10, 3]])
    out = corruption.bert_mask(
        jax.random.PRNGKey(0),
        ids,
        (ids != 0).astype(jnp.int32),
        num_predictions=3,
        mask_id=4,
        special_ids=SPECIALS,
        vocab_size=20,
    )
    np.testing.assert_array_equal(out["weights"].sum(axis=1), [1, 3])
    assert np.asarray(out["input_ids"])[0, 2:].tolist() == [3, 0, 0, 0]


def _tiny(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=40,
        num_classes=2,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        slfn_dim=16,
        exit_dim=8,
        max_length=16,
        type_vocab_size=2,
    )
    return ModelConfig(**{**fields, **overrides})


def test_mlm_head_is_tied_to_the_whole_binarized_embedding():
    config = _tiny()
    params = mlm.init_params(config, jax.random.PRNGKey(0), 16)
    table = params["embed"]["token"][bz.BINARY_EMBEDDING]
    alpha = jnp.mean(jnp.abs(table), axis=1, keepdims=True)
    np.testing.assert_allclose(
        mlm.tied_output_table(table, config), alpha * jnp.sign(table), rtol=1e-6
    )
    float_config = _tiny(binarize=False)
    np.testing.assert_array_equal(mlm.tied_output_table(table, float_config), table)
    assert "mlm_head" in params and "exit" not in params["stages"]
    # Tokens absent from the input still get gradient through the tied output layer.
    ids = jnp.full((2, 8), 5, jnp.int32)
    positions = jnp.array([[1, 2], [3, 4]])

    def loss(p):
        logits = mlm.MaskedLM(config).apply({"params": p}, ids, ids * 0, ids * 0 + 1, positions)
        return mlm.mlm_loss(logits, jnp.full((2, 2), 9), jnp.ones((2, 2)))[0]

    grads = jax.grad(loss)(params)["embed"]["token"][bz.BINARY_EMBEDDING]
    assert float(jnp.abs(grads[9]).sum()) > 0  # The target row, never looked up.


def test_frequency_bias_is_the_log_word_frequency_of_the_predictable_tokens():
    ids = np.array([[2, 7, 7, 7, 9, 3], [2, 9, 3, 0, 0, 0]], np.int32)  # [CLS]=2, [SEP]=3.
    mask = (ids != 0).astype(np.int8)
    rows = corpus.PackedRows(ids, np.zeros_like(ids, np.int8), mask, num_tokens=8)
    log_p = corpus.log_unigram_prior(rows, vocab_size=12, special_ids=[0, 1, 2, 3])
    counts = np.ones(12)
    counts[7] += 3
    counts[9] += 2  # The specials and padding are never targets: not counted.
    np.testing.assert_allclose(log_p, np.log(counts / counts.sum()), rtol=1e-6)
    params = mlm.with_output_bias(
        mlm.init_params(_tiny(vocab_size=12), jax.random.PRNGKey(0), 8), log_p
    )
    np.testing.assert_array_equal(params["mlm_head"]["bias"], log_p)


def test_mlm_parameters_load_into_the_classifier():
    config = _tiny()
    pretrained = mlm.init_params(config, jax.random.PRNGKey(0), 16)
    fresh = init_params(_tiny(max_length=8), jax.random.PRNGKey(1), 8)
    merged = init_from.merge(fresh, jax.tree.map(np.asarray, pretrained))
    np.testing.assert_array_equal(
        merged["embed"]["position_embedding"], pretrained["embed"]["position_embedding"][:8]
    )
    for path, value in jax.tree.leaves_with_path(pretrained["stages"]["block"]):
        got = merged["stages"]["block"]
        for key in path:
            got = got[key.key]
        np.testing.assert_array_equal(got, value)
    # Exit heads stay fresh; the model runs with the merged tree.
    np.testing.assert_array_equal(
        merged["stages"]["exit"]["logits"]["kernel"], fresh["stages"]["exit"]["logits"]["kernel"]
    )
    ids = jnp.ones((1, 8), jnp.int32)
    assert BEExformer(_tiny(max_length=8)).apply({"params": merged}, ids, ids, ids).shape == (
        2,
        1,
        2,
    )
    with pytest.raises(init_from.InitFromError, match="shape"):
        init_from.merge(init_params(_tiny(vocab_size=41), jax.random.PRNGKey(1), 8), pretrained)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(5, 99), min_size=1, max_size=30), min_size=1, max_size=20),
    st.integers(2, 17),
)
def test_packing_loses_no_token(pieces, max_length):
    ids = np.concatenate([np.array(p, np.int32) for p in pieces])
    segments = np.concatenate([np.full(len(p), i % 2, np.int8) for i, p in enumerate(pieces)])
    rows = corpus.pack(ids, segments, max_length, cls_id=2)
    assert rows.input_ids.shape[1] == max_length
    assert np.all(rows.input_ids[:, 0] == 2) and np.all(rows.mask[:, 0] == 1)
    body_mask = rows.mask[:, 1:].astype(bool)
    np.testing.assert_array_equal(rows.input_ids[:, 1:][body_mask], ids)
    np.testing.assert_array_equal(rows.segment_ids[:, 1:][body_mask], segments)
    assert body_mask[:-1].all()  # Only the last row has padding.
    assert rows.num_tokens == len(ids)


def test_deduplicate_drops_repeats_and_sub_phrases_keeps_pairs():
    units = [
        ("A gripping , funny film .",),
        ("funny film",),  # A sub-phrase of the first.
        ("a  GRIPPING , funny film .",),  # The first again (case, spaces).
        ("unny fil",),  # Not made of whole words of the first.
        ("The cat sat .", "A cat sat ."),
        ("cat sat",),  # Inside a pair's text.
        ("The cat sat .", "A cat sat ."),
    ]
    out = corpus.deduplicate(units)
    assert out == [units[0], units[3], units[4]]
    assert corpus.deduplicate(units, drop_contained=False) == [*units[:2], *units[3:6]]


# ---- runs of the real command line -----------------------------------------------------------

PRETRAIN_OVERRIDES = {
    "data.corpus_tasks": "wnli",
    "data.vocab_size": 600,
    "data.max_length": 32,
    "data.heldout_rows": 16,
    "batch_size": 8,
    "eval_batch_size": 8,
    "num_train_steps": 8,
    "checkpoint_every_steps": 2,
    "eval_every_steps": 4,
    "keep_period": 4,
    "log_every_steps": 1,
}


def _pretrain_command(workdir: pathlib.Path, tfds_dir: pathlib.Path, **overrides) -> list[str]:
    args = {**PRETRAIN_OVERRIDES, **overrides}
    return [
        sys.executable, "-m", "beex_jax.main", "--mode=pretrain",
        "--config=configs/pretrain.py:size=tiny", f"--workdir={workdir}",
        f"--config.data.glue_dir={training_runs.glue_dir()}",
        f"--config.data.tfds_dir={tfds_dir}",
        *(f"--config.{k}={v}" for k, v in args.items()),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tfds_dir) -> tuple[pathlib.Path, dict]:
    """A tiny pretraining run (8 steps on WNLI's train text) and its environment."""
    base = tmp_path_factory.mktemp("pretrain")
    env = training_runs.environment(base / "xla_cache")
    workdir = base / "reference"
    training_runs.run(_pretrain_command(workdir, tfds_dir), env)
    return workdir, env


def test_pretraining_writes_what_fine_tuning_needs(pretrained):
    workdir, _ = pretrained
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 8 and summary["corpus_units"] > 600
    assert 0 <= summary["heldout"]["mlm_accuracy"] <= 1
    assert (workdir / "vocab.txt").read_text().splitlines()[:5] == list(
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    )
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 4 in steps and 8 in steps  # keep_period keeps step 4 beside the latest.


@pytest.mark.slow
def test_pretraining_sigkill_then_rerun_is_bitwise_equal(pretrained, tmp_path, tfds_dir):
    reference, env = pretrained
    workdir = tmp_path / "killed"
    cmd = _pretrain_command(workdir, tfds_dir)
    kill_step = random.randint(2, 6)
    training_runs.kill_after_step(cmd, env, workdir, kill_step, tmp_path / "killed.log")
    training_runs.run(cmd, env)
    expected = init_from.load_params(str(reference))
    got = init_from.load_params(str(workdir))
    for (path, want), have in zip(
        jax.tree.leaves_with_path(expected), jax.tree.leaves(got), strict=True
    ):
        np.testing.assert_array_equal(have, want, err_msg=f"{path}, kill at {kill_step}")


def test_fine_tuning_starts_from_the_pretrained_values(pretrained, tmp_path, tfds_dir):
    workdir, env = pretrained
    finetuned = tmp_path / "finetuned"
    training_runs.run(
        training_runs.command(
            finetuned, tfds_dir, **{
                "init_from": workdir, "init_from_step": 4, "optim.body_lr_scale": 0.0,
                "data.max_length": 32, "num_train_steps": 2,
            },
        ),
        env,
    )  # fmt: skip
    config = json.loads((finetuned / "config.json").read_text())
    assert config["data"]["vocab_file"] == str(workdir / "vocab.txt")
    source = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree.leaves_with_path(init_from.load_params(str(workdir), step=4))
    }
    got = training_runs.final_params(finetuned)
    for name, value in got.items():  # A frozen body keeps the loaded values.
        if "['exit']" in name:
            continue
        want = source[name]
        if name.endswith("['position_embedding']"):
            want = want[: value.shape[0]]
        np.testing.assert_array_equal(value, want, err_msg=name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.hidden_dim": 64}, "another model size.*hidden_dim 32 vs 64"),
        ({"model.position": "alibi"}, "another model size.*position 'learned' vs 'alibi'"),
        ({"data.vocab_file": "VOCAB"}, "differs from the vocabulary of config.init_from"),
        ({"init_from_step": 3}, "has no checkpoint of step 3"),
    ],
)
def test_init_from_mismatches_are_one_clear_error(pretrained, tmp_path, overrides, message):
    workdir, _ = pretrained
    config = glue.get_config("task=wnli,size=tiny").unlock()
    config.init_from = str(workdir)
    config.data.max_length = 32  # What the tiny pretraining learned.
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        node = config[section] if section else config
        node[leaf] = str(tmp_path / "v.txt") if value == "VOCAB" else value
    with pytest.raises(init_from.InitFromError, match=message):
        config = init_from.apply_to_config(config)
        init_from.load_params(config.init_from, config.init_from_step)


def test_init_from_a_missing_or_damaged_workdir(pretrained, tmp_path):
    config = glue.get_config("task=wnli,size=tiny").unlock()
    config.init_from = str(tmp_path / "nowhere")
    with pytest.raises(init_from.InitFromError, match="is not a folder"):
        init_from.apply_to_config(config)
    (tmp_path / "empty").mkdir()
    config.init_from = str(tmp_path / "empty")
    with pytest.raises(init_from.InitFromError, match=r"no config\.json"):
        init_from.apply_to_config(config)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt"):
        (broken / name).write_bytes((pretrained[0] / name).read_bytes())
    with pytest.raises(init_from.InitFromError, match="no checkpoints/"):
        init_from.load_params(str(broken))
