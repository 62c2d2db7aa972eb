"""ELECTRA-style replaced-token detection: the body's names, the sample, the loss, end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import training_runs
from test_pretrain import _pretrain_command, _tiny

from beex_jax import config_fields, electra, init_from, mlm, pretrain
from beex_jax.model import BEExformer, ModelConfig, init_params
from configs import glue
from configs import pretrain as pretrain_config

IDS = jnp.array([[2, 7, 8, 9, 10, 11, 12, 3], [2, 13, 14, 15, 3, 0, 0, 0]], jnp.int32)
MASK = (IDS != 0).astype(jnp.int32)
POSITIONS = jnp.array([[1, 4], [2, 3]], jnp.int32)


def _apply(config, params, sample_seed=0, temperature=1.0):
    model = electra.Electra(config, generator_layers=1, temperature=temperature)
    return model.apply(
        {"params": params},
        IDS,
        IDS * 0,
        MASK,
        POSITIONS,
        rngs={"sample": jax.random.PRNGKey(sample_seed)},
    )


def test_the_discriminator_is_the_mlm_body_and_loads_into_the_classifier():
    config = _tiny()
    params = electra.init_params(config, jax.random.PRNGKey(0), 16, generator_layers=1)
    body = mlm.init_params(config, jax.random.PRNGKey(0), 16)
    for part in ("embed", "stages"):
        assert jax.tree.map(np.shape, params[part]) == jax.tree.map(np.shape, body[part])
    assert jax.tree.leaves(params["generator"])[0].shape[0] == 1  # One generator block.
    fresh = init_params(_tiny(max_length=8), jax.random.PRNGKey(1), 8)
    merged = init_from.merge(fresh, jax.tree.map(np.asarray, params))
    jax.tree.map(np.testing.assert_array_equal, merged["stages"]["block"], body_of(params))
    assert BEExformer(_tiny(max_length=8)).apply({"params": merged}, IDS, IDS, MASK).shape == (
        2,
        2,
        2,
    )


def body_of(params):
    """The discriminator's blocks, as a classifier loads them."""
    return params["stages"]["block"]


def test_samples_replace_only_the_masked_positions_and_follow_the_generator():
    config = _tiny()
    params = electra.init_params(config, jax.random.PRNGKey(0), 8, generator_layers=1)
    generator_logits, replaced, rtd_logits = _apply(config, params)
    assert generator_logits.shape == (1, 2, 2, config.vocab_size)
    assert rtd_logits.shape == (1, 2, 8)
    outside = np.ones(IDS.shape, bool)
    np.put_along_axis(outside, np.asarray(POSITIONS), False, 1)
    np.testing.assert_array_equal(np.asarray(replaced)[outside], np.asarray(IDS)[outside])
    targets = electra.rtd_targets(replaced, IDS)
    assert not np.asarray(targets)[outside].any()
    # At a temperature near zero the sample is the generator's most likely token.
    _, greedy, _ = _apply(config, params, sample_seed=3, temperature=1e-6)
    np.testing.assert_array_equal(
        np.take_along_axis(np.asarray(greedy), np.asarray(POSITIONS), 1),
        np.argmax(np.asarray(generator_logits[0]), -1),
    )
    # Different sample keys draw different tokens from a near-uniform untrained generator.
    _, other, _ = _apply(config, params, sample_seed=1)
    assert not np.array_equal(np.asarray(other), np.asarray(replaced))


def test_detection_loss_trains_the_body_not_the_generator_through_the_sample():
    config = _tiny()
    params = electra.init_params(config, jax.random.PRNGKey(0), 8, generator_layers=1)

    def detection_loss(p):
        _, replaced, rtd_logits = _apply(config, p)
        return electra.rtd_loss(rtd_logits, electra.rtd_targets(replaced, IDS), MASK)[0]

    grads = jax.grad(detection_loss)(params)
    for part in ("generator", "generator_head"):
        assert all(not np.any(g) for g in jax.tree.leaves(grads[part])), part
    for part in ("stages", "rtd_head", "embed"):
        assert any(np.any(g) for g in jax.tree.leaves(grads[part])), part


def test_rtd_loss_is_the_mean_sigmoid_cross_entropy_over_real_tokens():
    logits = jnp.array([[[2.0, -1.0, 0.5, 3.0]]])  # [E=1, B=1, T=4]; the last is padding.
    targets = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    mask = jnp.array([[1, 1, 1, 0]])
    loss, metrics = electra.rtd_loss(logits, targets, mask)
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(0.5))])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["rtd_accuracy_per_exit"]), [2 / 3], rtol=1e-6)
    np.testing.assert_allclose(float(metrics["replaced_fraction"]), 1 / 3, rtol=1e-6)
    assert float(metrics["rtd_tokens"]) == 3


def test_an_unknown_objective_is_one_clear_error():
    config = pretrain_config.get_config("size=tiny").unlock()
    config.objective = "bert"
    with pytest.raises(config_fields.ConfigError, match="objective='bert'; valid: mlm, electra"):
        pretrain.create_model(config)


def test_electra_pretraining_end_to_end_loads_into_fine_tuning(tmp_path, tfds_dir):
    env = training_runs.environment(tmp_path / "xla_cache")
    workdir = tmp_path / "electra"
    cmd = _pretrain_command(
        workdir, tfds_dir, objective="electra", num_train_steps=4, **{"electra.generator_layers": 1}
    )
    training_runs.run(cmd, env)
    heldout = json.loads((workdir / "summary.json").read_text())["heldout"]
    assert 0 < heldout["replaced_fraction"] <= 1
    assert 0 <= heldout["rtd_accuracy"] <= 1 and heldout["rtd_loss"] > 0
    assert len(heldout["rtd_accuracy_per_exit"]) == 1
    source = init_from.load_params(str(workdir))
    assert {"generator", "generator_head", "rtd_head", "embed", "stages"} <= set(source)
    config = glue.get_config("task=wnli,size=tiny").unlock()
    config.init_from = str(workdir)
    config.data.max_length = 32  # What the tiny pretraining learned.
    config = init_from.apply_to_config(config)
    config.model.vocab_size = len((workdir / "vocab.txt").read_text().splitlines())
    fresh = init_params(ModelConfig.from_config(config.model), jax.random.PRNGKey(1), 32)
    merged = init_from.merge(fresh, source)
    jax.tree.map(np.testing.assert_array_equal, merged["stages"]["block"], body_of(source))
    jax.tree.map(np.testing.assert_array_equal, merged["embed"]["token"], source["embed"]["token"])
