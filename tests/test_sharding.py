"""Partition rules on the real parameter tree, and 8 simulated devices training like one."""

from __future__ import annotations

import jax
import pytest
import training_runs
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from beex_jax import model, optim, sharding
from configs import glue

MESH = AbstractMesh((4, 2), (sharding.DATA, sharding.MODEL))


@pytest.fixture(scope="module")
def state_shapes():
    """Abstract params and AdamW state of the tiny model (nothing is computed)."""
    config = glue.get_config("task=rte,size=tiny")
    model_config = model.ModelConfig.from_config(config.model)
    params = jax.eval_shape(lambda: model.init_params(model_config, jax.random.PRNGKey(0)))
    tx, _ = optim.create_optimizer(config, num_train_steps=10)
    return {"params": params, "opt_state": jax.eval_shape(tx.init, params)}


def _by_path(specs):
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    return {sharding.path_str(path): spec for path, spec in leaves}


def test_rules_split_heads_and_slfn_units_over_model_and_keep_the_stage_axis(state_shapes):
    specs = _by_path(sharding.partition_specs(state_shapes, MESH))
    block = "params/stages/block"
    assert specs[f"{block}/attention/query/binary_kernel"] == P(None, None, "model")
    assert specs[f"{block}/attention/query/bias"] == P(None, "model")
    assert specs[f"{block}/attention/out/binary_kernel"] == P(None, "model", None)
    assert specs[f"{block}/slfn/gate_in/binary_kernel"] == P(None, None, "model")
    assert specs[f"{block}/slfn/content_out/binary_kernel"] == P(None, "model", None)
    assert specs[f"{block}/attention_norm/scale"] == P(None, None)
    assert specs["params/stages/exit/logits/kernel"] == P(None, None, None)
    assert specs["params/embed/token/binary_embedding"] == P(None, "model")
    # Optimizer moments follow their parameters; counters are replicated.
    for path, spec in specs.items():
        if "/mu/" in path or "/nu/" in path:
            assert spec == specs["params/" + path.split("/mu/")[-1].split("/nu/")[-1]], path
    assert all(spec == P() for path, spec in specs.items() if path.endswith("count"))


def test_rules_refuse_a_dimension_the_mesh_does_not_divide(state_shapes):
    mesh = AbstractMesh((1, 3), (sharding.DATA, sharding.MODEL))  # hidden_dim 32 % 3 != 0.
    with pytest.raises(ValueError, match="not divisible by mesh axis 'model' of size 3"):
        sharding.partition_specs(state_shapes["params"], mesh)


def test_unmatched_leaf_is_an_error(state_shapes):
    rules = sharding.PARTITION_RULES[:-1]  # Without the catch-all.
    with pytest.raises(ValueError, match="No partition rule matches"):
        sharding.partition_specs(state_shapes["params"], MESH, rules)


def test_mesh_needs_model_parallelism_to_divide_the_devices():
    with pytest.raises(ValueError, match="must divide"):
        sharding.create_mesh(model_parallelism=len(jax.devices()) + 1)


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path_factory, tfds_dir):
    base = tmp_path_factory.getbasetemp() / "training_runs"
    reference = training_runs.reference_run(base, tfds_dir)
    workdir = base / "eight_devices"
    proc = training_runs.run(
        training_runs.command(workdir, tfds_dir, **{"mesh.model_parallelism": 2}),
        training_runs.environment(base / "xla_cache", devices=8),
    )
    assert "Mesh {'data': 4, 'model': 2}" in proc.stderr
    training_runs.assert_params_close(
        training_runs.final_params(reference), training_runs.final_params(workdir)
    )
