"""`model.remat`: each block's activations recomputed in the backward pass (jax.checkpoint).

Recomputing changes where the work happens, not the numbers: the same parameter tree, the same
gradients and the same training step (dropout masks are drawn again from the same keys) as
saving the activations; the lowered training step really holds the forward dots twice; "auto"
resolves by backend; an unknown mode is a one-line error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beex_jax import loop, mlm, optim, train
from beex_jax import model as model_lib
from beex_jax.data import tokenizer
from beex_jax.model import BEExformer, ModelConfig
from configs import glue

LENGTH = 16


def _config(remat: str):
    config = glue.get_config("task=sst2,size=tiny").unlock()
    config.model.num_layers = 3
    config.model.dtype = "float32"
    config.model.remat = remat
    config.data.vocab_size = 100
    config.data.max_length = 32
    return config.copy_and_resolve_references()


def _batch(batch_size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, LENGTH + 1, batch_size)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(5, 100, (batch_size, LENGTH)) * mask).astype(np.int32)
    return {
        "input_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "mask": mask,
        "label": rng.integers(0, 2, batch_size).astype(np.int32),
        "weight": np.ones(batch_size, np.float32),
    }


def _loss(model_config: ModelConfig, batch):
    model = BEExformer(model_config)

    def loss(params):
        logits = model.apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["mask"]
        )
        labels = jnp.asarray(batch["label"])[None]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    return loss


def _params(model_config: ModelConfig):
    return model_lib.init_params(model_config, jax.random.key(0), LENGTH)


def test_same_parameters_and_gradients():
    saved, rematted = (ModelConfig.from_config(_config(m).model) for m in ("none", "block"))
    assert not saved.remat_blocks and rematted.remat_blocks
    params = _params(saved)
    chex_tree = jax.tree.map(np.shape, params)
    assert jax.tree.map(np.shape, _params(rematted)) == chex_tree
    batch = _batch()
    want = jax.jit(jax.grad(_loss(saved, batch)))(params)
    got = jax.jit(jax.grad(_loss(rematted, batch)))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got))


def test_training_steps_with_dropout_match():
    batch = _batch()
    results = {}
    for remat in ("none", "block"):
        config = _config(remat)
        model_config = ModelConfig.from_config(config.model)
        tx, schedule = optim.create_optimizer(config, num_train_steps=10)
        params = _params(model_config)
        state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.key(1))
        update = jax.jit(
            train.make_update_fn(
                BEExformer(model_config), tx, schedule, config, tokenizer.SPECIAL_IDS
            )
        )
        losses = []
        for _ in range(3):
            state, metrics = update(state, batch)
            losses.append(float(metrics["loss"]))
        results[remat] = (losses, state.params)
    np.testing.assert_allclose(results["block"][0], results["none"][0], rtol=1e-5)
    for g, w in zip(*(jax.tree.leaves(results[m][1]) for m in ("block", "none")), strict=True):
        # Adam divides by sqrt(v): float noise on near-zero gradients moves a weight by up to
        # ~1e-5, against updates of ~1e-3 per step.
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _dot_count(fn, *args) -> int:
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.dot_general")


def test_the_backward_pass_recomputes_the_forward_dots():
    batch = _batch()
    counts = {}
    for remat in ("none", "block"):
        model_config = ModelConfig.from_config(_config(remat).model)
        loss = _loss(model_config, batch)
        params = _params(model_config)
        counts[remat] = (_dot_count(loss, params), _dot_count(jax.grad(loss), params))
    forward, _ = counts["none"]
    assert counts["block"][0] == forward  # The forward pass alone is unchanged.
    # The scan body's forward dots run once more, in the backward loop (the embedding has none),
    # but for the exit head's last one: its output (the logits) is needed by no gradient.
    assert counts["block"][1] == counts["none"][1] + forward - 1


def test_mlm_body_is_rematted_too():
    configs = {}
    for remat in ("none", "block"):
        config = _config(remat)
        config.model.norm = "pre"
        configs[remat] = ModelConfig.from_config(config.model)
    params = mlm.init_params(configs["none"], jax.random.key(0), LENGTH)
    batch = _batch()
    positions = jnp.tile(jnp.arange(3)[None], (8, 1))

    def loss(config):
        def fn(params):
            logits = mlm.MaskedLM(config).apply(
                {"params": params},
                batch["input_ids"],
                batch["segment_ids"],
                batch["mask"],
                positions,
            )
            return jnp.mean(logits**2)

        return fn

    counts = {m: _dot_count(jax.grad(loss(c)), params) for m, c in configs.items()}
    assert counts["block"] > counts["none"]
    want, got = (jax.jit(jax.grad(loss(configs[m])))(params) for m in ("none", "block"))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, expected", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_auto_resolves_by_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(model_lib.jax, "default_backend", lambda: backend)
    assert ModelConfig.from_config(_config("auto").model).remat_blocks is expected


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match=r"model\.remat must be one of"):
        _ = ModelConfig.from_config(_config("sometimes").model).remat_blocks


def test_a_workdir_from_before_remat_and_tail_split_resumes_unchanged():
    """Their defaults are added to an older workdir's config, so resuming it sees no change."""
    from beex_jax import checkpointing

    config = _config("auto").to_dict()
    old = {**config, "model": dict(config["model"]), "exit": dict(config["exit"])}
    del old["model"]["remat"], old["exit"]["tail_split"]
    assert checkpointing.with_added_defaults(old) == checkpointing.with_added_defaults(config)
