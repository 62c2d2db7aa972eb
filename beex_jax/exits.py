"""Exit rules (docs/method.md §3): entropy, fractional entropy reduction, the online exit policies.

Every policy is *online*: whether an example leaves at block i is decided from the exits <= i
only, carried block to block in a small `PolicyState`. `policy_step` is that one-block decision;
`apply_policy` runs it over the logits of all exits (the full-depth reference), and the early-exit
inference (`beex_jax.early_exit`) runs the very same step inside its loop over blocks, which is
why stopping early changes no decision.

Indices are 0-based here (block i of the code is block i + 1 of docs/method.md §3); `min_exit_block`
keeps its 1-based meaning. Policies, all with a forced exit at the last block:

  entropy_reduction  (the paper, default) exit at block i >= 1 when r_i < delta, with
                     r_i = (H_{i-1} - H_i) / max(H_{i-1}, eps); for regression (one output)
                     r_i is the fractional change of the prediction,
                     |y_i - y_{i-1}| / max(|y_{i-1}|, eps).
  entropy_threshold  (DeeBERT) exit when H_i < entropy_threshold (classification only).
  patience           (PABEE) exit once `patience` consecutive exits agreed with the exit before
                     them: same argmax, or for regression a fractional change below delta.

`answer_from`: "current" answers with the logits of the block that decided to exit. "previous"
answers with the logits of the block before it when the rule fired (the last block "did not
help"), and with the last block's own logits when the example only stopped because the model
ended. So the *answer* exit (`exit_index`) and the last block *run* (`last_block`) differ by one
exactly when the rule fired under "previous": `last_block = min(exit_index + 1, L - 1)` there,
`last_block = exit_index` under "current" (see `last_block_run`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from beex_jax.config_fields import dataclass_from_section

POLICIES = ("entropy_reduction", "entropy_threshold", "patience")
ANSWER_FROM = ("current", "previous")
EPS = 1e-6


def entropy(logits: jax.Array) -> jax.Array:
    """H = -sum_c p_c log p_c of softmax(logits) over the last axis, in float32."""
    logits = logits.astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def fractional_entropy_reduction(
    previous_entropy: jax.Array, entropy_now: jax.Array, eps: float = EPS
) -> jax.Array:
    """r_i = (H_{i-1} - H_i) / max(H_{i-1}, eps): the share of uncertainty block i removed."""
    return (previous_entropy - entropy_now) / jnp.maximum(previous_entropy, eps)


def fractional_change(previous: jax.Array, current: jax.Array, eps: float = EPS) -> jax.Array:
    """|y_i - y_{i-1}| / max(|y_{i-1}|, eps): how much a regression prediction still moves."""
    return jnp.abs(current - previous) / jnp.maximum(jnp.abs(previous), eps)


def exit_signal(previous_logits: jax.Array, logits: jax.Array, eps: float = EPS) -> jax.Array:
    """r of docs/method.md §3 between consecutive exits [..., C] -> [...]: exit when below delta.

    Classification: the fractional entropy reduction. Regression (C == 1): the fractional change
    of the prediction.
    """
    chex.assert_equal_shape([previous_logits, logits])
    if logits.shape[-1] == 1:
        previous = previous_logits[..., 0].astype(jnp.float32)
        return fractional_change(previous, logits[..., 0].astype(jnp.float32), eps)
    return fractional_entropy_reduction(entropy(previous_logits), entropy(logits), eps)


def prediction(logits: jax.Array) -> jax.Array:
    """Argmax class (int32), or the score itself for regression (C == 1)."""
    if logits.shape[-1] == 1:
        return logits[..., 0].astype(jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class ExitConfig:
    """The `config.exit` section: numbers are pytree leaves (sweeps reuse one compilation)."""

    delta: float = 0.1
    min_exit_block: int = 2
    entropy_threshold: float = 0.3
    patience: int = 2
    policy: str = struct.field(pytree_node=False, default="entropy_reduction")
    answer_from: str = struct.field(pytree_node=False, default="current")
    # Rows per chunk of early-exit inference; 0 chooses from the batch, length and device.
    chunk_size: int = struct.field(pytree_node=False, default=0)
    chunk_tokens: int = struct.field(pytree_node=False, default=1024)  # CPU chunk, in tokens.
    min_chunks: int = struct.field(pytree_node=False, default=8)  # Chunks per batch, at least.
    # The active rows past a block's last full chunk run in chunks of chunk / tail_split rows
    # (a power of two; 1: one more full chunk), so fewer exited rows are computed.
    tail_split: int = struct.field(pytree_node=False, default=4)

    @classmethod
    def from_config(cls, exit_config: Any) -> ExitConfig:
        """Builds and validates from a `config.exit` ConfigDict (or mapping)."""
        return dataclass_from_section(cls, exit_config, "exit").validate()

    def validate(self) -> ExitConfig:
        """Raises ValueError on an unknown policy / answer_from or inconsistent settings."""
        if self.policy not in POLICIES:
            raise ValueError(f"Unknown exit policy {self.policy!r}; valid: {POLICIES}.")
        if self.answer_from not in ANSWER_FROM:
            raise ValueError(f"Unknown answer_from {self.answer_from!r}; valid: {ANSWER_FROM}.")
        if self.chunk_size < 0 or self.chunk_tokens < 1 or self.min_chunks < 1:
            raise ValueError(
                f"chunk_size must be >= 0 (0: auto), chunk_tokens and min_chunks >= 1; got "
                f"{self.chunk_size}, {self.chunk_tokens}, {self.min_chunks}."
            )
        if self.tail_split < 1 or self.tail_split & (self.tail_split - 1):
            raise ValueError(f"tail_split must be a power of two >= 1, not {self.tail_split}.")
        if isinstance(self.min_exit_block, int):  # Concrete (not traced): check it.
            if self.min_exit_block < 1:
                raise ValueError(f"min_exit_block is 1-based, got {self.min_exit_block}.")
            if self.answer_from == "previous" and self.min_exit_block < 2:
                raise ValueError("answer_from='previous' needs min_exit_block >= 2.")
        return self


class PolicyState(NamedTuple):
    """What an online policy remembers between blocks, per example."""

    previous_logits: jax.Array  # [B, C] float32, logits of the exit before.
    agreements: jax.Array  # [B] int32, consecutive agreeing exits (patience).


class ExitStep(NamedTuple):
    """The decision at one block, per example."""

    exits: jax.Array  # [B] bool: stops after this block.
    answer_logits: jax.Array  # [B, C] float32: logits it answers with if it stops.
    answer_index: jax.Array  # [B] int32: 0-based exit those logits come from.


class ExitDecision(NamedTuple):
    """Per example, over the whole model: which exit answers and the last block that ran."""

    exit_index: jax.Array  # [B] int32, 0-based exit whose logits are the answer.
    last_block: jax.Array  # [B] int32, 0-based last block computed (FLOPs go up to it).


def init_policy_state(batch_size: int, num_classes: int) -> PolicyState:
    """The state before block 0."""
    return PolicyState(
        previous_logits=jnp.zeros((batch_size, num_classes), jnp.float32),
        agreements=jnp.zeros((batch_size,), jnp.int32),
    )


def _rule_fires(
    config: ExitConfig, state: PolicyState, logits: jax.Array, block: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(the policy's own exit test at `block`, updated agreement count)."""
    has_previous = block >= 1
    regression = logits.shape[-1] == 1
    if config.policy == "entropy_reduction":
        r = exit_signal(state.previous_logits, logits)
        return has_previous & (r < config.delta), state.agreements
    if config.policy == "entropy_threshold":
        if regression:
            raise ValueError("entropy_threshold needs class logits; use entropy_reduction.")
        return entropy(logits) < config.entropy_threshold, state.agreements
    # patience
    if regression:
        agree = exit_signal(state.previous_logits, logits) < config.delta
    else:
        agree = prediction(logits) == prediction(state.previous_logits)
    agreements = jnp.where(has_previous & agree, state.agreements + 1, 0)
    return agreements >= config.patience, agreements


def policy_step(
    config: ExitConfig,
    state: PolicyState,
    logits: jax.Array,
    block: jax.Array | int,
    num_layers: int,
) -> tuple[ExitStep, PolicyState]:
    """The online decision after 0-based `block` from its logits [B, C] and the carried state."""
    chex.assert_rank(logits, 2)
    logits = logits.astype(jnp.float32)
    block = jnp.asarray(block, jnp.int32)
    fires, agreements = _rule_fires(config, state, logits, block)
    fires = fires & (block + 1 >= config.min_exit_block)
    exits = fires | (block == num_layers - 1)
    if config.answer_from == "previous":
        answer_logits = jnp.where(fires[:, None], state.previous_logits, logits)
        answer_index = jnp.where(fires, block - 1, block)
    else:
        answer_logits = logits
        answer_index = jnp.broadcast_to(block, exits.shape)
    step = ExitStep(exits=exits, answer_logits=answer_logits, answer_index=answer_index)
    return step, PolicyState(previous_logits=logits, agreements=agreements)


@jax.jit
def apply_policy(all_logits: jax.Array, config: ExitConfig) -> ExitDecision:
    """Runs the policy over the logits of every exit [L, B, C]: each example's exit and last block.

    Examples never look at exits after the one they stop at, so this equals stopping early.
    """
    chex.assert_rank(all_logits, 3)
    num_layers, batch_size, num_classes = all_logits.shape

    def body(carry, inputs):
        state, done, exit_index, last_block = carry
        block, logits = inputs
        step, state = policy_step(config, state, logits, block, num_layers)
        stops_now = step.exits & ~done
        exit_index = jnp.where(stops_now, step.answer_index, exit_index)
        last_block = jnp.where(stops_now, block, last_block)
        return (state, done | step.exits, exit_index, last_block), None

    zeros = jnp.zeros((batch_size,), jnp.int32)
    init = (
        init_policy_state(batch_size, num_classes),
        jnp.zeros((batch_size,), bool),
        zeros,
        zeros,
    )
    blocks = jnp.arange(num_layers, dtype=jnp.int32)
    (_, _, exit_index, last_block), _ = jax.lax.scan(body, init, (blocks, all_logits))
    return ExitDecision(exit_index=exit_index, last_block=last_block)


def exit_decisions(
    logits: jax.Array,
    *,
    delta: float | jax.Array,
    min_exit_block: int = 2,
    answer_from: str = "current",
) -> jax.Array:
    """The rule of docs/method.md §3 on the logits of all exits [L, B, C]: 0-based exit per example.

    The example stops at the first 0-based block i >= min_exit_block - 1 with r_i < delta (or at
    the last block). With answer_from="current" the returned index is that i and the answer is
    logits[i]; with "previous" it is i - 1 and the answer is logits[i - 1] (blocks up to i ran),
    except for an example that reached the last block without the rule firing: L - 1, answered
    by logits[L - 1].
    """
    config = ExitConfig(
        delta=delta, min_exit_block=min_exit_block, answer_from=answer_from
    ).validate()
    return apply_policy(logits, config).exit_index


def last_block_run(exit_index: jax.Array, num_layers: int, answer_from: str) -> jax.Array:
    """The 0-based last block computed for an example answering from `exit_index`."""
    if answer_from == "previous":
        return jnp.minimum(exit_index + 1, num_layers - 1)
    return exit_index


def gather_exit(all_logits: jax.Array, exit_index: jax.Array) -> jax.Array:
    """logits[exit_index[b], b] for every example b: [L, B, C], [B] -> [B, C]."""
    chex.assert_rank(all_logits, 3)
    return jnp.take_along_axis(all_logits, exit_index[None, :, None], axis=0)[0]
