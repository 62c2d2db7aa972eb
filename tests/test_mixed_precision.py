"""`model.dtype="bf16_f32"`: bfloat16 dot operands, float32 accumulation and activations (issue 24).

What is tested, on the tiny model (these CPUs may lack bf16 dot instructions: XLA then emulates
the bf16 dots, which changes the speed only, not the numbers):
- "auto" resolves to bf16_f32 on a CPU with bf16 dots, float32 on one without (the detector is
  faked both ways), bfloat16 on GPU/TPU; the /proc/cpuinfo flags parser.
- Every dense layer's dot (forward, and the backward one for its input) takes bfloat16 operands
  and gives float32 (the lowered StableHLO); the backward dot for the weights and the attention's
  score and mixing dots are float32 (see `beex_jax.layers`); float32 mode has no bfloat16 at all.
- With random latent weights (std 0.3: exits that differ; not a trained model), the logits of
  every exit stay within MIXED_ATOL of float32's and the early-exit decisions are equal on at
  least 99.5% of 512 random examples; latent and packed (exported) weights give the same logits.
- Gradients w.r.t. the float32 latent weights flow through the surrogate and stay close to
  float32's; the MLM head's logits likewise; 40 steps of training follow float32's loss curve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from beex_jax import early_exit, export, loop, mlm, optim, precision, train
from beex_jax import exits as ex
from beex_jax import model as model_lib
from beex_jax.data import tokenizer
from beex_jax.layers import einsum
from beex_jax.model import BEExformer, ModelConfig
from configs import glue

LENGTH = 16
# bfloat16 operands keep 8 bits of mantissa (relative step 2^-8); accumulation is float32. Through
# the 4 blocks of the tiny model the exit logits (of size ~1) moved by at most ~0.01 on 512
# examples; the tolerance stated and tested is 0.03.
MIXED_ATOL = 0.03
EXITS_EQUAL = 0.995  # Share of examples whose early-exit decision equals float32's.
KEYS = ("input_ids", "segment_ids", "mask")


def _config(**model) -> ml_collections.ConfigDict:
    config = glue.get_config("task=sst2,size=tiny").unlock()
    config.model.num_layers = 4
    config.data.vocab_size = 100
    config.data.max_length = 32
    for key, value in model.items():
        config.model[key] = value
    return config.copy_and_resolve_references()


def _model_config(dtype: str, **model) -> ModelConfig:
    return ModelConfig.from_config(_config(dtype=dtype, **model).model)


@functools.cache
def _latent_params(seed: int = 0):
    """Random latent parameters of the tiny model (std 0.3: exits that differ)."""
    rng = np.random.default_rng(seed)
    shapes = export.abstract_params(_model_config("float32"))
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


def _batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, batch_size)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(5, 100, (batch_size, LENGTH)) * mask).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "mask": mask}


def _logits(params, model_config, batch) -> np.ndarray:
    return np.asarray(
        early_exit.full_depth_logits(params, *(batch[k] for k in KEYS), model_config=model_config)
    )


def _dots(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


def _split(dots: list[str]) -> tuple[list[str], list[str]]:
    """(bf16 x bf16 -> f32 dots, f32 x f32 -> f32 dots); any other dot fails the test."""
    narrow = [d for d in dots if d.count("xbf16>") == 2 and d.endswith("xf32>")]
    wide = [d for d in dots if "bf16" not in d and d.endswith("xf32>")]
    assert len(narrow) + len(wide) == len(dots), dots
    return narrow, wide


# ----------------------------------------------------------------------------- "auto"
def test_cpuinfo_flags():
    assert precision.bf16_dot_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert precision.bf16_dot_flags("flags : sse amx_bf16 amx_tile")
    assert not precision.bf16_dot_flags("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert not precision.bf16_dot_flags("model name : avx512_bf16 in the name, not a flag\n")
    assert not precision.bf16_dot_flags("")
    assert isinstance(precision.cpu_has_bf16_dot(), bool)


@pytest.mark.parametrize(
    ("backend", "cpu_bf16", "mode"),
    [
        ("cpu", True, "bf16_f32"),
        ("cpu", False, "float32"),
        ("gpu", False, "bfloat16"),
        ("tpu", True, "bfloat16"),
        ("cuda", False, "bfloat16"),
    ],
)
def test_auto_resolves_by_backend_and_cpu(backend, cpu_bf16, mode):
    assert precision.resolve("auto", backend, cpu_bf16) == mode
    for explicit in ("float32", "bfloat16", "bf16_f32"):
        assert precision.resolve(explicit, backend, cpu_bf16) == explicit


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown model\.dtype 'float16'"):
        precision.resolve("float16", "cpu", False)


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_model_config_auto_with_the_detector_faked(monkeypatch, cpu_bf16):
    monkeypatch.setattr(precision, "cpu_has_bf16_dot", lambda: cpu_bf16)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    config = _model_config("auto")
    assert config.compute_dtype == ("bf16_f32" if cpu_bf16 else "float32")
    assert config.activation_dtype == jnp.float32  # Activations stay float32 on CPU either way.
    assert config.dot_dtype == (jnp.bfloat16 if cpu_bf16 else jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert config.compute_dtype == "bfloat16"
    assert config.activation_dtype == config.dot_dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- the dots
def test_einsum_bf16_operands_float32_result_forward_and_backward():
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    w = jax.random.normal(jax.random.key(1), (8, 4))

    def loss(x, w):
        return jnp.sum(
            jnp.tanh(einsum("...i,io->...o", x, w, dtype=jnp.float32, dot_dtype="bfloat16"))
        )

    text = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).as_text()
    narrow, wide = _split(_dots(text))
    assert len(narrow) == 2 and len(wide) == 1  # Forward and d/dx narrow, d/dw float32.
    _, (dx, dw) = jax.value_and_grad(loss, (0, 1))(x, w)
    _, (dx32, dw32) = jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(x @ w)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(dx, dx32, atol=0.05)
    np.testing.assert_allclose(dw, dw32, atol=0.1)


def test_einsum_refuses_an_index_it_cannot_transpose():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="neither the other"):
        einsum("ab,c->c", x, jnp.ones(3), dtype=jnp.float32, dot_dtype=jnp.bfloat16)


def _train_loss(model_config: ModelConfig):
    model = BEExformer(model_config)
    batch = _batch(16, seed=3)
    labels = jnp.asarray(np.random.default_rng(3).integers(0, 2, 16))

    def loss(params):
        logits = model.apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["mask"]
        )
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels[None]))

    return loss


def test_every_dot_of_the_training_step_is_bf16_into_float32():
    config = _model_config("bf16_f32", remat="none")  # Recomputed dots: tests/test_remat.py.
    text = jax.jit(jax.value_and_grad(_train_loss(config))).lower(_latent_params()).as_text()
    narrow, wide = _split(_dots(text))
    # The scan holds one stage: 10 dense layers (Q, K, V, O, 4 SLFN, 2 exit head), each with a
    # narrow forward dot and d/dinput, and a float32 d/dweights; the attention's 2 dots forward
    # and their 4 backward stay float32.
    assert len(narrow) == 2 * 10 and len(wide) == 10 + 6
    float_text = jax.jit(jax.value_and_grad(_train_loss(_model_config("float32", remat="none"))))
    assert "bf16" not in float_text.lower(_latent_params()).as_text()


# ----------------------------------------------------------------------------- accuracy guard
def test_mixed_logits_and_exits_match_float32():
    f32 = _model_config("float32")
    batch = _batch(512, seed=1)
    latent = _latent_params()
    want = _logits(latent, f32, batch)
    # Latent weights (training, evaluation of a workdir) and packed ones (an export, a predictor):
    # alpha is read back from the packed leaves and scales the float32 result.
    mixed = {"latent": (latent, _model_config("bf16_f32"))}
    mixed["packed"] = model_lib.inference_params(*mixed["latent"])
    # delta = 0: exit once the entropy stops falling, which splits this random model's batch.
    exit_config = ex.ExitConfig.from_config(_config().exit).replace(delta=0.0)
    reference = np.asarray(ex.apply_policy(jnp.asarray(want), exit_config).exit_index)
    assert len(np.unique(reference)) > 1  # The comparison covers several exits.
    inputs = [batch[k] for k in KEYS]
    for name, (params, config) in mixed.items():
        got = _logits(params, config, batch)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=MIXED_ATOL, err_msg=name)
        assert np.abs(got - want).max() > 0  # bfloat16 really was used.
        exits = np.asarray(ex.apply_policy(jnp.asarray(got), exit_config).exit_index)
        assert (exits == reference).mean() >= EXITS_EQUAL, (name, (exits == reference).mean())
        # Early-exit inference itself (chunks of the active rows) runs the mixed dots too.
        early = early_exit.early_exit_forward(params, *inputs, exit_config, model_config=config)
        equal = np.asarray(early[0]["exit_index"]) == reference
        assert equal.mean() >= EXITS_EQUAL, (name, equal.mean())


def test_gradients_close_to_float32():
    latent = _latent_params()
    grads = {
        dtype: jax.jit(jax.grad(_train_loss(_model_config(dtype))))(latent)
        for dtype in ("float32", "bf16_f32")
    }
    flat32 = dict(jax.tree_util.tree_leaves_with_path(grads["float32"]))
    for path, g in jax.tree_util.tree_leaves_with_path(grads["bf16_f32"]):
        want = flat32[path]
        assert g.dtype == jnp.float32
        scale = float(jnp.linalg.norm(want)) + 1e-6
        assert float(jnp.linalg.norm(g - want)) <= 0.1 * scale, jax.tree_util.keystr(path)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["bf16_f32"]))


def test_mlm_head_matches_float32():
    configs = {d: _model_config(d, norm="pre") for d in ("float32", "bf16_f32")}
    params = mlm.init_params(configs["float32"], jax.random.key(0), LENGTH)
    batch = _batch(8, seed=2)
    positions = jnp.tile(jnp.arange(3)[None], (8, 1))

    def logits(config, params):
        return mlm.MaskedLM(config).apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["mask"], positions
        )

    want, got = (logits(configs[d], params) for d in ("float32", "bf16_f32"))
    np.testing.assert_allclose(got, want, atol=MIXED_ATOL)
    packed, packed_config = model_lib.inference_params(params, configs["bf16_f32"])
    np.testing.assert_allclose(logits(packed_config, packed), want, atol=MIXED_ATOL)


def test_training_curve_follows_float32():
    """40 steps on a learnable rule (label: is token 7 in the text): the two loss curves agree."""
    rng = np.random.default_rng(0)
    batch = _batch(32, seed=4)
    batch["input_ids"][:16, 1] = 7  # Half the examples hold token 7.
    batch["input_ids"][16:] = np.where(batch["input_ids"][16:] == 7, 8, batch["input_ids"][16:])
    batch["label"] = (np.arange(32) < 16).astype(np.int32)
    batch["weight"] = np.ones(32, np.float32)
    order = rng.permutation(32)
    batch = {k: v[order] for k, v in batch.items()}
    curves = {}
    for dtype in ("float32", "bf16_f32"):
        config = _config(dtype=dtype, dropout_rate=0.0, num_layers=2)
        config.optim.learning_rate = 3e-3
        model_config = ModelConfig.from_config(config.model)
        tx, schedule = optim.create_optimizer(config, num_train_steps=40)
        params = model_lib.init_params(model_config, jax.random.key(0), LENGTH)
        state = loop.TrainState(jnp.int32(0), params, tx.init(params), jax.random.key(1))
        update = jax.jit(
            train.make_update_fn(
                BEExformer(model_config), tx, schedule, config, tokenizer.SPECIAL_IDS
            )
        )
        curve = []
        for _ in range(40):
            state, metrics = update(state, batch)
            curve.append(float(metrics["loss"]))
        curves[dtype] = np.array(curve)
    f32, mixed = curves["float32"], curves["bf16_f32"]
    assert f32[-5:].mean() < 0.7 * f32[:5].mean()  # It learns (the curve is worth comparing).
    np.testing.assert_allclose(mixed, f32, rtol=0.1, atol=0.05, err_msg=f"{f32} vs {mixed}")
