"""Device mesh, parameter partition rules and batch placement.

The mesh has two axes: `data` (batch) and `model` (Megatron-style tensor parallelism). Which
parameter goes where is written once, as regex rules on parameter paths (`stages/block/...`); the
same rules place the optimizer state, whose leaves end in the same paths (`.../mu/stages/...`).
Rules name the trailing dimensions of a leaf: the leading L axis of the stacked `nn.scan` stages
stays unsharded, so slicing stage `i` out (early exit) needs no communication.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"
PyTree = Any

# (regex searched in the leaf path, spec of the leaf's trailing dims); first match wins.
# Column-parallel layers split their output units over `model`, the row-parallel layer after them
# splits its input units, so each pair needs one reduction. Per-channel alphas (one per output
# unit) of column-parallel kernels stay local.
PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"token/binary_embedding$", P(None, MODEL)),  # Features (any vocabulary size works).
    (r"attention/(query|key|value)/binary_kernel$", P(None, MODEL)),  # Heads.
    (r"attention/(query|key|value)/bias$", P(MODEL)),
    (r"attention/out/binary_kernel$", P(MODEL, None)),
    (r"(gate_in|content_in|ffn_in)/binary_kernel$", P(None, MODEL)),
    (r"(gate_in|content_in|ffn_in)/bias$", P(MODEL)),
    (r"(gate_out|content_out|ffn_out)/binary_kernel$", P(MODEL, None)),
    (r".*", P()),  # Everything else (norms, exit heads, positions, step, RNG) is replicated.
)


def create_mesh(model_parallelism: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh over the devices of every process; `data` takes what `model` leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if model_parallelism < 1 or len(devices) % model_parallelism:
        raise ValueError(
            f"mesh.model_parallelism={model_parallelism} must divide the {len(devices)} devices."
        )
    # Auto axes: GSPMD propagates shardings from the jit boundaries (Flax linen layers carry no
    # sharding annotations of their own).
    return jax.make_mesh(
        (len(devices) // model_parallelism, model_parallelism),
        (DATA, MODEL),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def path_str(path: tuple[Any, ...]) -> str:
    """'a/b/0/c' for a `jax.tree_util` key path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _spec_for(path: str, shape: tuple[int, ...], rules: Sequence[tuple[str, P]], mesh_shape) -> P:
    matches = [(pattern, spec) for pattern, spec in rules if re.search(pattern, path)]
    if not matches:
        raise ValueError(f"No partition rule matches parameter {path!r}.")
    pattern, spec = matches[0]
    if len(spec) > len(shape):
        raise ValueError(f"Rule {pattern!r} -> {spec} has more axes than {path!r} {shape}.")
    # Leading (stacked-stage) axes are not sharded.
    full = (None,) * (len(shape) - len(spec)) + tuple(spec)
    for dim, axis in zip(shape, full, strict=True):
        size = mesh_shape.get(axis, 1) if axis is not None else 1
        if dim % size:
            raise ValueError(
                f"{path!r} {shape}: dimension {dim} is not divisible by mesh axis {axis!r} of "
                f"size {size}; change mesh.model_parallelism or the model sizes."
            )
    return P(*full)


def partition_specs(
    tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, P]] = PARTITION_RULES
) -> PyTree:
    """A PartitionSpec for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
    mesh_shape = dict(mesh.shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _spec_for(path_str(path), np.shape(leaf), rules, mesh_shape), tree
    )


def tree_shardings(
    tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, P]] = PARTITION_RULES
) -> PyTree:
    """NamedShardings for every leaf of `tree`, by the partition rules."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        partition_specs(tree, mesh, rules),
        is_leaf=lambda x: isinstance(x, P),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of the batch (every process calls this).

    Each process contributes its own rows; the global batch is their concatenation in process
    order. The local batch size must be divisible by the process's share of the `data` axis.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def initialize_distributed(config: Any) -> None:
    """Joins the multi-process run when `config.distributed` (once, before any JAX computation)."""
    if not config.distributed or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )


def sync_processes(name: str) -> None:
    """Waits until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
