"""Training end to end on a slice of real RTE (in process), and the optimizer's rules."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import training_runs
from jax.experimental.compilation_cache import compilation_cache

from beex_jax import checkpointing, optim, train
from beex_jax.data import pipeline
from beex_jax.data import tokenizer as tokenizer_lib
from configs import glue

# ------------------------------------------------------------------------------------- optimizer


def _toy_params():
    return {
        "dense": {"binary_kernel": jnp.full((2, 3), 0.5), "bias": jnp.full((3,), 0.5)},
        "norm": {"scale": jnp.full((3,), 0.5)},
        "logits": {"kernel": jnp.full((3, 2), 0.5)},
        "token": {"binary_embedding": jnp.full((4, 3), 0.5)},
    }


def test_decay_mask_skips_latent_binary_weights_biases_and_norms():
    mask = optim.decay_mask(_toy_params())
    assert mask == {
        "dense": {"binary_kernel": False, "bias": False},
        "norm": {"scale": False},
        "logits": {"kernel": True},
        "token": {"binary_embedding": False},
    }
    # The full-precision counterpart decays the same leaves as ordinary weights.
    float_mask = optim.decay_mask(_toy_params(), binarized=False)
    assert float_mask["dense"]["binary_kernel"] and float_mask["token"]["binary_embedding"]


def test_update_decays_only_float_weights_and_clips_latent_ones():
    config = glue.get_config("task=rte,size=tiny")
    config.optim.weight_decay = 0.5
    config.optim.learning_rate = 0.1
    config.optim.warmup_fraction = 0.0
    tx, _ = optim.create_optimizer(config, num_train_steps=1000)
    params = _toy_params()
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(4):  # With zero gradients only weight decay moves weights.
        params, state = step(params, state, jax.tree.map(jnp.zeros_like, params))
    chex.assert_trees_all_equal(params["dense"], _toy_params()["dense"])
    chex.assert_trees_all_equal(params["token"], _toy_params()["token"])
    assert float(params["logits"]["kernel"][0, 0]) < 0.5
    # A gradient pushing latent weights past 1 leaves them at 1.
    big = jax.tree.map(lambda x: -1e3 * jnp.ones_like(x), params)
    for _ in range(20):
        params, state = step(params, state, big)
    assert float(jnp.max(params["dense"]["binary_kernel"])) == 1.0
    assert float(jnp.max(params["token"]["binary_embedding"])) == 1.0
    assert float(jnp.max(params["dense"]["bias"])) > 1.0


def _body_and_heads(num_blocks: int) -> dict:
    """A parameter tree shaped like the model's: embedding, stacked blocks and exit heads."""
    return {
        "embed": {"token": {"binary_embedding": jnp.full((4, 3), 0.5)}},
        "stages": {
            "block": {"dense": {"kernel": jnp.full((num_blocks, 3, 3), 0.5)}},
            "exit": {"logits": {"kernel": jnp.full((num_blocks, 3, 2), 0.5)}},
        },
    }


def _first_update(params: dict, **optim_fields: float) -> dict:
    """The optimizer's first update of `params` under gradients of 0.3, no warm-up."""
    config = glue.get_config("task=rte,size=tiny")
    for name, value in optim_fields.items():
        config.optim[name] = value
    config.optim.warmup_fraction = 0.0
    tx, _ = optim.create_optimizer(config, num_train_steps=10)
    grads = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), params)
    return tx.update(grads, tx.init(params), params)[0]


def test_body_lr_scale_scales_only_the_embedding_and_blocks():
    params = _body_and_heads(num_blocks=2)
    assert optim.body_mask(params) == {
        "embed": {"token": {"binary_embedding": True}},
        "stages": {"block": {"dense": {"kernel": True}}, "exit": {"logits": {"kernel": False}}},
    }
    full, gentle = _first_update(params), _first_update(params, body_lr_scale=0.25)
    quarter = jax.tree.map(lambda u: 0.25 * u, full)
    # rtol: latent clipping recomputes the update as clip(p + u) - p.
    chex.assert_trees_all_close(gentle["embed"], quarter["embed"], rtol=1e-4)
    chex.assert_trees_all_close(gentle["stages"]["block"], quarter["stages"]["block"], rtol=1e-4)
    chex.assert_trees_all_equal(gentle["stages"]["exit"], full["stages"]["exit"])
    assert float(jnp.abs(full["stages"]["exit"]["logits"]["kernel"]).min()) > 0


def test_layer_decay_scales_blocks_by_depth_and_the_embedding_most():
    params = _body_and_heads(num_blocks=3)
    scales = optim.layer_decay_scales(params, 0.5, num_blocks=3)
    # Three blocks: 0.5^3, 0.5^2, 0.5^1 from the bottom; the embedding 0.5^4; the exits 1.
    np.testing.assert_allclose(
        scales["stages"]["block"]["dense"]["kernel"][:, 0, 0], [1 / 8, 1 / 4, 1 / 2]
    )
    np.testing.assert_allclose(scales["embed"]["token"]["binary_embedding"], 1 / 16)
    np.testing.assert_allclose(scales["stages"]["exit"]["logits"]["kernel"], 1.0)
    full, decayed = _first_update(params), _first_update(params, layer_decay=0.5)
    expected = jax.tree.map(lambda u, f: u * f, full, scales)
    chex.assert_trees_all_close(decayed, expected, rtol=1e-4)
    # It composes with the body-wide scale.
    both = _first_update(params, layer_decay=0.5, body_lr_scale=0.5)
    chex.assert_trees_all_close(
        both["stages"]["block"],
        jax.tree.map(lambda u: 0.5 * u, decayed["stages"]["block"]),
        rtol=1e-4,
    )
    chex.assert_trees_all_equal(both["stages"]["exit"], full["stages"]["exit"])


def test_schedule_warms_up_linearly_then_decays_to_zero():
    config = glue.get_config("task=rte")
    schedule = optim.learning_rate_schedule(config, num_train_steps=100)  # 6 warm-up steps.
    np.testing.assert_allclose(
        [schedule(0), schedule(3), schedule(6), schedule(100)], [0, 5e-4, 1e-3, 0], atol=1e-9
    )
    assert 0 < schedule(50) < 1e-3


def test_sign_flip_fraction_counts_latent_binary_weights_only():
    old = _toy_params()
    new = jax.tree.map(lambda x: -x, old)  # Every leaf flips sign...
    new["token"]["binary_embedding"] = old["token"]["binary_embedding"]  # ...but the embedding.
    # 6 of the 6 + 12 binary weights flipped; float leaves do not count.
    np.testing.assert_allclose(optim.sign_flip_fraction(old, new), 6 / 18)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def compile_once(tmp_path_factory):
    """A persistent compilation cache for this module: every run here compiles the same program."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = {name: getattr(jax.config, name) for name in names}
    compilation_cache.reset_cache()
    jax.config.update(names[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(names[1], 0)
    jax.config.update(names[2], 0)
    yield
    for name, value in previous.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir, compile_once):
    """(workdir, final state, summary) of an uninterrupted tiny run (given a relative workdir)."""
    parent = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(parent)
        state, summary = train.train_and_evaluate(training_runs.tiny_config(tfds_dir), "run")
    return parent / "run", state, summary


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_trains_evaluates_and_logs(trained):
    workdir, state, summary = trained
    assert int(state.step) == training_runs.NUM_TRAIN_STEPS
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["vocab_size"] == summary["vocab_size"] <= 1000
    records = _records(workdir)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, training_runs.NUM_TRAIN_STEPS + 1))
    for key in ("learning_rate", "grad_norm", "param_norm", "sign_flip_fraction"):
        assert all(np.isfinite(r[key]) for r in train_records), key
    assert 0 < train_records[0]["sign_flip_fraction"] < 0.5  # Signs do move, not all at once.
    evals = [r for r in records if "validation/flops_saved" in r]
    assert [r["step"] for r in evals] == [3, 6]  # eval_every_steps=3, and at the end.
    dev = summary["dev"]["validation"]
    assert dev["num_examples"] == 40 and sum(dev["exit_histogram"]) == 40
    assert {"exit_1/accuracy", "exit_3/accuracy", "early_exit/accuracy"} <= set(dev)
    assert 1 <= dev["mean_exit_block"] <= 3 and 0 <= dev["flops_saved"] < 1
    assert summary["size"]["ratio"] > 1
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_keeps_latest_and_best_checkpoints(trained):
    workdir, state, summary = trained
    latest = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert latest == [4, 6]  # Every 2 steps, keep 2.
    assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == [
        str(summary["best_step"])
    ]
    params, config = checkpointing.restore_params(str(workdir), which="latest")
    chex.assert_trees_all_equal(jax.device_get(params), jax.device_get(state.params))
    best, _ = checkpointing.restore_params(str(workdir), which="best")
    chex.assert_trees_all_equal_shapes(best, params)
    assert config.task == "rte" and config.model.vocab_size == summary["vocab_size"]


def _fail_at_batch(monkeypatch, index, make_failure):
    """Makes global training batch `index` (0-based; it feeds step index + 1) fail or go bad."""
    original = pipeline.GlueInput.train_batch

    def train_batch(self, step, seed):
        batch = original(self, step, seed)
        return make_failure(batch) if step == index else batch

    monkeypatch.setattr(pipeline.GlueInput, "train_batch", train_batch)


def test_interrupted_run_resumes_bitwise(trained, tmp_path, tfds_dir, monkeypatch):
    def interrupt(batch):
        raise KeyboardInterrupt("simulated interruption")

    _fail_at_batch(monkeypatch, 4, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(training_runs.tiny_config(tfds_dir), str(tmp_path))
    monkeypatch.undo()
    assert checkpointing.Checkpoints(str(tmp_path)).latest_step() == 4
    state, _ = train.train_and_evaluate(training_runs.tiny_config(tfds_dir), str(tmp_path))
    chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(trained[1].params))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tfds_dir, monkeypatch):
    def poison(batch):
        return dict(batch, weight=np.full_like(batch["weight"], np.nan))

    _fail_at_batch(monkeypatch, 4, poison)  # Step 5 sees a NaN loss.
    with pytest.raises(FloatingPointError, match=r"Non-finite .*loss.* at step 5"):
        train.train_and_evaluate(training_runs.tiny_config(tfds_dir), str(tmp_path))
    assert checkpointing.Checkpoints(str(tmp_path)).latest_step() == 4
    params, _ = checkpointing.restore_params(str(tmp_path), which="latest")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params)))


def test_non_finite_loss_before_any_checkpoint_says_none_is_kept(tmp_path, tfds_dir, monkeypatch):
    """Issue 12.6: a NaN at step 1 must not claim that a last good checkpoint is kept."""

    def poison(batch):
        return dict(batch, weight=np.full_like(batch["weight"], np.nan))

    _fail_at_batch(monkeypatch, 0, poison)
    with pytest.raises(FloatingPointError, match=r"at step 1.*No checkpoint was saved yet") as e:
        train.train_and_evaluate(training_runs.tiny_config(tfds_dir), str(tmp_path))
    assert "last good checkpoint" not in str(e.value)
    assert checkpointing.Checkpoints(str(tmp_path)).latest_step() is None


def test_resume_with_another_config_only_when_asked_and_recorded(trained, tmp_path, tfds_dir):
    """Issue 12.7: a changed seed is refused naming it; allowed, every config is kept."""
    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    changed = training_runs.tiny_config(tfds_dir, seed=7)
    with pytest.raises(checkpointing.CheckpointError, match=r"Changed .*: seed: 0 -> 7\. "):
        train.train_and_evaluate(changed, str(workdir))
    assert json.loads((workdir / "config.json").read_text())["seed"] == 0  # Untouched.
    train.train_and_evaluate(changed, str(workdir), allow_config_change=True)
    history = [
        json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()
    ]
    assert [(h["config"]["seed"], h["start_step"]) for h in history] == [(0, 0), (7, 6)]
    assert json.loads((workdir / "config.json").read_text())["seed"] == 7


def test_workdir_keeps_its_vocabulary(trained, tmp_path):
    """Issue 12.9: predict works with data.tfds_dir (the learned vocabulary's cache) gone."""
    import beex_jax

    workdir = tmp_path / "moved"
    shutil.copytree(trained[0], workdir)
    config = json.loads((workdir / "config.json").read_text())
    learned = tokenizer_lib.learned_vocab_path(checkpointing.read_config(str(trained[0])))
    assert (workdir / "vocab.txt").read_bytes() == pathlib.Path(learned).read_bytes()
    config["data"]["tfds_dir"] = str(tmp_path / "deleted_tfds")
    config["data"]["glue_dir"] = str(tmp_path / "deleted_glue")
    (workdir / "config.json").write_text(json.dumps(config))
    texts = [("a man plays .", "someone plays ."), ("it rains .", "it is dry .")]
    assert beex_jax.load(str(workdir)).predict(texts) == beex_jax.load(str(trained[0])).predict(
        texts
    )


def test_workdir_of_another_model_is_refused(trained, tfds_dir):
    config = training_runs.tiny_config(tfds_dir, **{"model.hidden_dim": 64})
    with pytest.raises(checkpointing.CheckpointError, match=r"different model.*hidden_dim"):
        train.train_and_evaluate(config, str(trained[0]))


def test_corrupt_checkpoint_gives_clear_error(trained, tmp_path, tfds_dir):
    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    for path in (workdir / "checkpoints" / "6" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="Cannot restore step 6"):
        train.train_and_evaluate(training_runs.tiny_config(tfds_dir), str(workdir))
    with pytest.raises(checkpointing.CheckpointError, match="corrupt"):
        checkpointing.restore_params(str(workdir), which="latest")


# ---------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--config.model.num_layer=3", 'unknown config field.*Did you mean "num_layers"'),
        ("--config.num_epochs=ten", "invalid literal for int"),
    ],
)
def test_command_line_rejects_unknown_fields_and_wrong_types(flag, message, capsys, monkeypatch):
    from beex_jax import main  # Defines the absl flags; imported only here.

    argv = ["main", "--config=configs/glue.py:task=rte", "--workdir=/tmp/unused", flag]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds `--config.` overrides there.
    try:
        with pytest.raises(SystemExit) as exit_info:
            main.parse_flags(argv)
    finally:
        main.flags.FLAGS.unparse_flags()
    assert exit_info.value.code != 0
    assert re.search(message, f"{exit_info.value.code}{capsys.readouterr()}", re.DOTALL)


def test_embedding_lr_scale_scales_only_the_token_table():
    params = _body_and_heads(num_blocks=2)
    full, slow = _first_update(params), _first_update(params, embedding_lr_scale=0.1)
    chex.assert_trees_all_close(
        slow["embed"], jax.tree.map(lambda u: 0.1 * u, full["embed"]), rtol=1e-3
    )
    chex.assert_trees_all_equal(slow["stages"], full["stages"])
    frozen = _first_update(params, embedding_lr_scale=0.0)
    assert float(jnp.abs(frozen["embed"]["token"]["binary_embedding"]).max()) == 0.0
