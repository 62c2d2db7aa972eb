"""Early-exit inference under jit (docs/method.md §3): later blocks run only on examples still in.

The batch keeps static shapes; what shrinks is the *active prefix*. Rows of the hidden states are
kept in a slot order that puts the still-running examples first. For block i, a
`jax.lax.while_loop` (a `fori_loop` with a traced trip count) runs stage i on consecutive chunks of
rows of that prefix only (`exit_chunk_rows`: chosen from the batch, its length and the device, so
that a small batch is split too, unless `config.exit.chunk_size` fixes it; the rows past the last
full chunk in chunks `config.exit.tail_split` times smaller, so that few exited rows are
computed); the online exit
policy (`beex_jax.exits.policy_step`) then decides for the rows just computed, and a stable sort
on "has exited" moves the survivors to the front again. The outer `while_loop` over blocks stops
as soon as nobody is left. Every row is computed independently of the others in its chunk
(attention, pooling and LayerNorm are per example), so the result does not depend on which
examples share a chunk.

`predict_full_depth` is the reference: the plain scanned forward pass over every block, then the
same policy on all exits, then a gather. Both return the same dict:

  logits      [B, C] float32  the answering exit's logits
  prediction  [B]             argmax (int32), or the score for regression (float32)
  exit_index  [B] int32       0-based exit that answers (see `beex_jax.exits` for answer_from)
  last_block  [B] int32       0-based last block computed
  flops       [B] float32     FLOPs spent on the example at its real length (`beex_jax.flops`)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from beex_jax import exits as ex
from beex_jax import flops
from beex_jax.model import (
    BEExformer,
    Embedder,
    ModelConfig,
    Params,
    Stage,
    stage_params,
)
from beex_jax.precision import ACCELERATORS

Batch = Mapping[str, Any]
CHUNK_TOKENS = ex.ExitConfig.chunk_tokens  # Tokens per chunk on CPU when none is configured.


def _inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(input_ids, segment_ids, mask) of a batch, checked for shape."""
    input_ids, segment_ids, mask = (
        jnp.asarray(batch[key]) for key in ("input_ids", "segment_ids", "mask")
    )
    chex.assert_rank([input_ids, segment_ids, mask], 2)
    chex.assert_equal_shape([input_ids, segment_ids, mask])
    return input_ids, segment_ids, mask


def _lengths(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask, axis=-1).astype(jnp.int32)


def _outputs(
    model_config: ModelConfig,
    lengths: jax.Array,
    logits: jax.Array,
    exit_index: jax.Array,
    last_block: jax.Array,
) -> dict[str, jax.Array]:
    """The prediction dict shared by both inference paths."""
    return {
        "logits": logits.astype(jnp.float32),
        "prediction": ex.prediction(logits),
        "exit_index": exit_index.astype(jnp.int32),
        "last_block": last_block.astype(jnp.int32),
        "flops": flops.per_example_flops(model_config, lengths, last_block.astype(jnp.int32)),
    }


def apply_exit_policy(
    all_logits: jax.Array,
    lengths: jax.Array,
    exit_config: ex.ExitConfig,
    *,
    model_config: ModelConfig,
) -> dict[str, jax.Array]:
    """The early-exit answer from the logits of every exit [L, B, C]: policy, gather, FLOPs.

    Equal to what `predict_early_exit` returns (tests/test_early_exit.py), so code that has every
    exit's logits anyway (evaluation, policy sweeps) uses this instead of running blocks again.
    """
    decision = ex.apply_policy(all_logits, exit_config)
    logits = ex.gather_exit(all_logits, decision.exit_index)
    return _outputs(model_config, lengths, logits, decision.exit_index, decision.last_block)


def chunk_rows(
    batch_size: int,
    length: int,
    *,
    chunk_tokens: int = CHUNK_TOKENS,
    min_chunks: int = 1,
    platform: str | None = None,
) -> int:
    """Rows per chunk for a [batch_size, length] batch: cache-sized on CPU, whole on accelerators.

    On CPU a chunk holds about `chunk_tokens` tokens (its activations stay in cache; one big batch
    is slower per example than a loop over such chunks); on an accelerator the batch is one chunk.
    `min_chunks > 1` caps a chunk at ceil(batch_size / min_chunks) rows, so that early exit can skip
    part of a small batch. The result is a power of two (or the whole batch).
    """
    platform = platform or jax.default_backend()
    rows = batch_size if platform in ACCELERATORS else max(1, chunk_tokens // max(length, 1))
    rows = min(rows, -(-batch_size // max(min_chunks, 1)))
    if rows >= batch_size:
        return batch_size
    return 1 << (rows.bit_length() - 1)  # Round down to a power of two.


def exit_chunk_rows(exit_config: ex.ExitConfig, batch_size: int, length: int) -> int:
    """Rows per chunk of early exit: exit_config.chunk_size, or chosen from the shape (0)."""
    if exit_config.chunk_size:
        return min(exit_config.chunk_size, batch_size)
    return chunk_rows(
        batch_size,
        length,
        chunk_tokens=exit_config.chunk_tokens,
        min_chunks=exit_config.min_chunks,
    )


def _pad_rows(x: jax.Array, slots: int) -> jax.Array:
    """x padded with zero rows to `slots` rows."""
    return jnp.pad(x, [(0, slots - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _active_rows(num_rows: jax.Array | int | None, batch_size: int) -> jax.Array:
    """The rows that are real examples (int32, may be traced): the rest are padding."""
    return jnp.int32(batch_size) if num_rows is None else jnp.asarray(num_rows, jnp.int32)


@functools.partial(jax.jit, static_argnames=("model_config", "chunk_size"))
def full_depth_logits(
    params: Params,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
    *,
    model_config: ModelConfig,
    chunk_size: int = 0,
    num_rows: jax.Array | int | None = None,
) -> jax.Array:
    """Logits of every exit [L, B, C]: the plain scanned forward pass, all blocks.

    A batch larger than a chunk (`chunk_size` rows; 0: `chunk_rows` of the shape) runs as a loop
    over chunks. `num_rows` (may be traced) marks the rows from there on as padding: the loop stops
    at the chunk holding the last real row, and the logits of skipped rows are 0.
    """
    batch_size = input_ids.shape[0]
    model = BEExformer(model_config)
    chunk = chunk_size or chunk_rows(*input_ids.shape)
    if chunk >= batch_size:
        return model.apply({"params": params}, input_ids, segment_ids, mask)
    slots = -(-batch_size // chunk) * chunk
    inputs = [_pad_rows(x, slots) for x in (input_ids, segment_ids, mask)]

    def run_chunk(c, logits):
        rows = [jax.lax.dynamic_slice_in_dim(x, c * chunk, chunk) for x in inputs]
        rows_logits = model.apply({"params": params}, *rows)  # [L, chunk, C]
        return jax.lax.dynamic_update_slice_in_dim(logits, rows_logits, c * chunk, axis=1)

    num_chunks = (_active_rows(num_rows, batch_size) + chunk - 1) // chunk
    shape = (model_config.num_layers, slots, model_config.num_classes)
    logits = jax.lax.fori_loop(0, num_chunks, run_chunk, jnp.zeros(shape, jnp.float32))
    return logits[:, :batch_size]


@functools.partial(jax.jit, static_argnames="model_config")
def full_depth_forward(
    params: Params,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
    exit_config: ex.ExitConfig,
    *,
    model_config: ModelConfig,
) -> dict[str, jax.Array]:
    """The reference on arrays: all blocks, then the exit policy on every exit, then a gather."""
    all_logits = full_depth_logits(params, input_ids, segment_ids, mask, model_config=model_config)
    return apply_exit_policy(all_logits, _lengths(mask), exit_config, model_config=model_config)


def _permute(tree: Any, order: jax.Array) -> Any:
    """Reorders the leading (slot) axis of every leaf."""
    return jax.tree.map(lambda x: jnp.take(x, order, axis=0), tree)


@functools.partial(jax.jit, static_argnames="model_config")
def early_exit_forward(
    params: Params,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
    exit_config: ex.ExitConfig,
    *,
    model_config: ModelConfig,
    num_rows: jax.Array | int | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Early-exit inference on arrays: (prediction dict, work done); see `predict_early_exit`.

    `num_rows` (may be traced) marks the rows from there on as padding: they are never computed
    and their outputs are meaningless.
    """
    cfg = model_config
    batch_size = input_ids.shape[0]
    num_layers, num_classes = cfg.num_layers, cfg.num_classes
    chunk = exit_chunk_rows(exit_config, batch_size, input_ids.shape[1])
    slots = -(-batch_size // chunk) * chunk  # Padded so every chunk is a full slice.
    pad = [(0, slots - batch_size), (0, 0)]
    input_ids, segment_ids, mask = (jnp.pad(x, pad) for x in (input_ids, segment_ids, mask))

    h = Embedder(cfg).apply({"params": params["embed"]}, input_ids, segment_ids)
    stage = Stage(cfg)

    # The rows past the last full chunk run in chunks of `tail` rows (a divisor of `chunk`).
    tail = max(1, chunk // exit_config.tail_split) if chunk & (chunk - 1) == 0 else chunk

    def run_block(block, num_active, h, mask):
        """Stage `block` on the chunks covering the first `num_active` slots -> (h, logits)."""
        p = stage_params(params, block)

        def run_rows(size, offset):
            def run_chunk(c, carry):
                h, logits = carry
                start = offset + c * size
                rows = jax.lax.dynamic_slice_in_dim(h, start, size)
                rows_mask = jax.lax.dynamic_slice_in_dim(mask, start, size)
                rows, rows_logits = stage.apply({"params": p}, rows, rows_mask)
                h = jax.lax.dynamic_update_slice_in_dim(h, rows, start, axis=0)
                logits = jax.lax.dynamic_update_slice_in_dim(logits, rows_logits, start, axis=0)
                return h, logits

            return run_chunk

        full = num_active // chunk
        tails = (num_active - full * chunk + tail - 1) // tail
        logits = jnp.zeros((slots, num_classes), jnp.float32)
        h, logits = jax.lax.fori_loop(0, full, run_rows(chunk, 0), (h, logits))
        # tail divides chunk, so full * chunk + tails * tail <= slots: every slice is in bounds.
        h, logits = jax.lax.fori_loop(0, tails, run_rows(tail, full * chunk), (h, logits))
        return h, logits, full * chunk + tails * tail

    def body(carry):
        block, num_active, rows, out, rows_run = carry
        h, logits, block_rows = run_block(block, num_active, rows["h"], rows["mask"])
        step, state = ex.policy_step(exit_config, rows["state"], logits, block, num_layers)
        active = jnp.arange(slots) < num_active
        stops = active & step.exits
        out = {
            "logits": jnp.where(stops[:, None], step.answer_logits, out["logits"]),
            "exit_index": jnp.where(stops, step.answer_index, out["exit_index"]),
            "last_block": jnp.where(stops, block, out["last_block"]),
        }
        state = jax.tree.map(
            lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            state,
            rows["state"],
        )
        rows = {"h": h, "mask": rows["mask"], "state": state, "example": rows["example"]}
        # Survivors first, in their current order: the next block runs on them only.
        running = active & ~step.exits
        order = jnp.argsort(jnp.logical_not(running).astype(jnp.int32), stable=True)
        rows, out = _permute((rows, out), order)
        num_active = jnp.sum(running, dtype=jnp.int32)
        return block + 1, num_active, rows, out, rows_run + block_rows

    def cond(carry):
        block, num_active, _, _, _ = carry
        return (block < num_layers) & (num_active > 0)

    rows = {
        "h": h,
        "mask": mask,
        "state": ex.init_policy_state(slots, num_classes),
        "example": jnp.arange(slots, dtype=jnp.int32),
    }
    out = {
        "logits": jnp.zeros((slots, num_classes), jnp.float32),
        "exit_index": jnp.zeros((slots,), jnp.int32),
        "last_block": jnp.zeros((slots,), jnp.int32),
    }
    init = (jnp.int32(0), _active_rows(num_rows, batch_size), rows, out, jnp.int32(0))
    blocks_run, _, rows, out, rows_run = jax.lax.while_loop(cond, body, init)
    # Back from slot order to example order, padding dropped.
    out = _permute(out, jnp.argsort(rows["example"])[:batch_size])
    outputs = _outputs(
        cfg, _lengths(mask[:batch_size]), out["logits"], out["exit_index"], out["last_block"]
    )
    return outputs, {"blocks_run": blocks_run, "rows_run": rows_run}


def _configs(config: Any) -> tuple[ModelConfig, ex.ExitConfig]:
    """Static model config and exit config from the full ConfigDict of configs/glue.py."""
    return ModelConfig.from_config(config.model), ex.ExitConfig.from_config(config.exit)


def predict_early_exit(
    params: Params, batch: Batch, config: Any, *, with_work: bool = False
) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Early-exit inference on a batch: later blocks run only on examples that have not exited.

    with_work=True also returns the work done: `blocks_run` (iterations of the loop over blocks)
    and `rows_run` (example-blocks computed, padding rows of partial chunks included; the
    reference computes batch_size * num_layers).
    """
    model_config, exit_config = _configs(config)
    outputs, work = early_exit_forward(
        params, *_inputs(batch), exit_config, model_config=model_config
    )
    return (outputs, work) if with_work else outputs


def predict_full_depth(params: Params, batch: Batch, config: Any) -> dict[str, jax.Array]:
    """The reference: every block on every example, then the exit policy and a gather."""
    model_config, exit_config = _configs(config)
    return full_depth_forward(params, *_inputs(batch), exit_config, model_config=model_config)


def exit_histogram(exit_index: jax.Array | np.ndarray, num_layers: int) -> np.ndarray:
    """Number of examples answering from each exit [L]."""
    return np.bincount(np.asarray(exit_index), minlength=num_layers)[:num_layers]
