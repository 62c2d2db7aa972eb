"""Inference runs on weights binarized once, in the activation dtype of the device (issue 13).

- `model.inference_params` turns latent weights into alpha * sign(W) once; the forward pass with
  `packed_weights=True` then reads them as they are (no sign, no alpha in its program) and gives
  the latent model's outputs. Predictors (from a workdir or an export) and the evaluation during
  training hold such weights.
- `model.dtype="auto"` computes activations in bfloat16 on GPU/TPU and float32 on CPU; parameters
  stay float32. bfloat16 logits agree with float32 within BF16_ATOL and the early-exit decisions
  agree on at least 99% of the examples.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from beex_jax import binarize as bz
from beex_jax import early_exit, evaluate, export, sharding
from beex_jax import exits as ex
from beex_jax import model as model_lib
from beex_jax.model import ModelConfig
from configs import glue

LENGTH = 16
# bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%). Through the 4 blocks of the
# tiny model the exit logits (of size ~1) moved by at most 0.01 on 1,024 examples; the tolerance
# stated (and tested) is three times that.
BF16_ATOL = 0.03


def _config(**model) -> ml_collections.ConfigDict:
    config = glue.get_config("task=sst2,size=tiny").unlock()
    config.model.num_layers = 4
    config.data.vocab_size = 100
    config.data.max_length = 32
    # float32: served and latent weights then give the same logits to 1e-6, and the served
    # program holds no custom_vjp at all (bf16_f32's einsum is one; test_mixed_precision.py).
    config.model.dtype = "float32"
    for key, value in model.items():
        config.model[key] = value
    return config.copy_and_resolve_references()


@functools.cache
def _latent_params(seed: int = 0):
    """Random latent parameters of the tiny model (std 0.3: exits that differ)."""
    rng = np.random.default_rng(seed)
    shapes = export.abstract_params(ModelConfig.from_config(_config().model))
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


def _batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, batch_size)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(5, 100, (batch_size, LENGTH)) * mask).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": mask}


def _logits(params, model_config, batch) -> np.ndarray:
    return np.asarray(
        early_exit.full_depth_logits(
            params,
            batch["input_ids"],
            batch["segment_ids"],
            batch["mask"],
            model_config=model_config,
        )
    )


def assert_binarized(params, latent=None) -> None:
    """Every binary leaf holds +-alpha (one |value| per alpha group), with the latent's signs."""
    flat = export.flatten(params)
    latent_flat = export.flatten(latent) if latent is not None else {}
    binary = [n for n in flat if n.endswith(bz.BINARY_PARAM_NAMES)]
    assert binary
    for name in binary:
        leaf = np.asarray(flat[name])
        axis = -2 if name.endswith(bz.BINARY_KERNEL) else -1
        magnitude = np.abs(leaf)
        alpha = np.max(magnitude, axis=axis, keepdims=True)
        np.testing.assert_array_equal(magnitude, np.broadcast_to(alpha, leaf.shape), name)
        assert (magnitude > 0).all(), name
        if name in latent_flat:
            np.testing.assert_array_equal(
                leaf >= 0, np.asarray(latent_flat[name]) >= 0, err_msg=name
            )


# ----------------------------------------------------------------------------- binarize once
@pytest.mark.parametrize("scale", ["per_channel", "per_tensor"])
def test_inference_params_are_binarized_once_and_give_the_latent_outputs(scale):
    config = ModelConfig.from_config(_config(scale=scale).model)
    latent = _latent_params()
    params, served = model_lib.inference_params(latent, config)
    assert served.packed_weights and not config.packed_weights
    assert_binarized(params, latent)
    chex.assert_trees_all_equal_dtypes(params, latent)  # Still float32.
    batch = _batch(64)
    np.testing.assert_allclose(
        _logits(params, served, batch), _logits(latent, config, batch), rtol=1e-6, atol=1e-6
    )
    # Idempotent on a served model, and a no-op for the full-precision counterpart.
    assert model_lib.inference_params(params, served)[0] is params
    float_config = ModelConfig.from_config(_config(binarize=False).model)
    assert model_lib.inference_params(latent, float_config) == (latent, float_config)


def test_served_forward_pass_does_not_binarize():
    """The program of the packed forward pass holds no sign: weights are read as they are."""
    config = ModelConfig.from_config(_config().model)
    params, served = model_lib.inference_params(_latent_params(), config)
    batch = _batch(4)

    def program(p, c):
        return str(
            jax.make_jaxpr(
                functools.partial(early_exit.full_depth_logits, model_config=c, chunk_size=4)
            )(p, batch["input_ids"], batch["segment_ids"], batch["mask"])
        )

    assert "custom_vjp_call" in program(_latent_params(), config)  # Latent: sign every call.
    assert "custom_vjp_call" not in program(params, served)


def test_predictor_holds_binarized_weights(tmp_path, bert_vocab_file):
    """beex_jax.load on a training workdir binarizes once; its answers equal the latent model's."""
    from test_predict import SENTENCES, _save_workdir

    from beex_jax import checkpointing, predict

    _save_workdir(tmp_path, "sst2", bert_vocab_file)
    predictor = predict.load(str(tmp_path), batch_size=4)
    latent, config = checkpointing.restore_params(str(tmp_path), "best")
    assert predictor.model_config.packed_weights and predictor.config.model.packed_weights
    assert not config.model.get("packed_weights", False)
    assert_binarized(predictor.params, latent)
    # 7 texts in batches of 4: the second has 3 rows and 1 padding row, skipped (num_rows).
    encoded = predictor.encode([(s,) for s in [*SENTENCES, "fine", "a bad , bad film"]])
    want = early_exit.predict_full_depth(latent, encoded, config)  # Latent weights, binarized.
    got = predictor.predict_encoded(encoded)
    np.testing.assert_array_equal(got["exit_index"], want["exit_index"])
    np.testing.assert_array_equal(got["prediction"], want["prediction"])
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
    # A predictor built from the served weights and config does not binarize them again.
    again = predict.Predictor(predictor.params, predictor.config, predictor.tokenizer)
    assert again.params is predictor.params or jax.tree.all(
        jax.tree.map(lambda a, b: a is b, again.params, predictor.params)
    )


def test_evaluation_reads_weights_binarized_once():
    config = _config()
    mesh = sharding.create_mesh(1, jax.devices()[:1])
    latent = _latent_params()
    params = evaluate.inference_params(config, latent)
    assert_binarized(params, latent)
    batch = {**_batch(32), "label": np.zeros(32, np.int32), "weight": np.ones(32, np.float32)}
    out = evaluate.make_eval_step(config, mesh)(params, sharding.global_batch(batch, mesh))
    want = _logits(latent, ModelConfig.from_config(config.model), batch)
    np.testing.assert_array_equal(out["exit_predictions"], np.argmax(want, axis=-1))


# ----------------------------------------------------------------------------- dtype
def test_auto_dtype_is_bfloat16_on_accelerators_only(monkeypatch):
    config = ModelConfig.from_config(_config(dtype="auto").model)
    assert config.dtype == "auto"
    assert config.activation_dtype == jnp.float32  # The tests run on CPU.
    for backend, dtype in (("gpu", jnp.bfloat16), ("tpu", jnp.bfloat16), ("cpu", jnp.float32)):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert config.activation_dtype == dtype, backend
    monkeypatch.undo()
    assert ModelConfig.from_config(_config(dtype="bfloat16").model).activation_dtype == (
        jnp.bfloat16
    )


def test_bfloat16_agrees_with_float32():
    """Params stay float32; logits within BF16_ATOL; exits agree on >= 99% of examples."""
    f32 = ModelConfig.from_config(_config(dtype="float32").model)
    bf16 = ModelConfig.from_config(_config(dtype="bfloat16").model)
    init = model_lib.init_params(bf16, jax.random.key(0), LENGTH)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init))
    params, f32 = model_lib.inference_params(_latent_params(), f32)
    bf16 = bf16.for_inference()
    batch = _batch(1024, seed=1)
    want, got = _logits(params, f32, batch), _logits(params, bf16, batch)
    assert got.dtype == np.float32  # Exit heads hand float32 logits to the exit rule.
    np.testing.assert_allclose(got, want, atol=BF16_ATOL)
    assert np.abs(got - want).max() > 0  # bfloat16 really was used.
    # delta = 0: exit once the entropy stops falling, which splits this random model's batch.
    exit_config = ex.ExitConfig.from_config(_config().exit).replace(delta=0.0)
    decision = {
        name: jax.tree.map(np.asarray, ex.apply_policy(jnp.asarray(logits), exit_config))
        for name, logits in (("f32", want), ("bf16", got))
    }
    exits_agree = decision["f32"].exit_index == decision["bf16"].exit_index
    assert len(np.unique(decision["f32"].exit_index)) > 1  # The comparison covers several exits.
    assert exits_agree.mean() >= 0.99, exits_agree.mean()
    predictions_agree = np.argmax(want[-1], -1) == np.argmax(got[-1], -1)
    assert predictions_agree.mean() >= 0.99, predictions_agree.mean()
