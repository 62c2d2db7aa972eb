"""Training losses over all exits (docs/method.md §4): soft routing (default), mean, weighted.

With CE_i the loss of exit i (cross-entropy, or squared error for regression), per example:

    mean:          (1/L) sum_i CE_i
    weighted:      sum_i i * CE_i / sum_i i                    (1-based i, PABEE-style)
    soft_routing:  sum_i q_i * CE_i + lam * (1/L) sum_i CE_i

where q_i is the soft probability of exiting at i (`soft_exit_probabilities`). q is a function of
the logits. With `detach_routing=False` (the paper's form) the gradient also flows through q, so
the model is trained both to classify at every exit and to make its entropy stop dropping where
an exit is already good; that path moves predictions without reference to the labels (for STS-B,
whose exit signal is the fractional change of the predicted score, it outweighs the squared-error
gradient). With `detach_routing=True` q only weights the per-exit losses, which keep their
gradient. The batch loss is the mean over examples weighted by `weights` (padding examples have
weight 0).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from beex_jax.exits import exit_signal

LOSSES = ("soft_routing", "mean", "weighted")


def per_exit_losses(
    all_logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """CE_i per exit and example [L, B]: cross-entropy, or squared error if num_classes == 1.

    `label_smoothing` mixes the one-hot target with the uniform distribution (classification).
    """
    logits = all_logits.astype(jnp.float32)
    if num_classes == 1:
        return jnp.square(logits[..., 0] - labels.astype(jnp.float32)[None])
    # Test examples carry label -1 (and no meaningful loss); clip so indexing stays in range.
    labels = jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1)
    labels = jnp.broadcast_to(labels[None], logits.shape[:2])
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def soft_exit_probabilities(r: jax.Array, *, delta: float, tau: float) -> jax.Array:
    """q [L, B]: soft probability of exiting at each exit, from the exit signals r [L, B].

    s_i = sigmoid((delta - r_i) / tau) with s_1 = 0 and s_L = 1 (r_1 is ignored), and
    q_i = s_i * prod_{j<i} (1 - s_j), so q sums to 1 over exits.
    """
    chex.assert_rank(r, 2)
    num_layers = r.shape[0]
    s = jax.nn.sigmoid((delta - r.astype(jnp.float32)) / tau)
    exit_at = jnp.arange(num_layers)[:, None]
    s = jnp.where(exit_at == 0, 0.0, s)
    s = jnp.where(exit_at == num_layers - 1, 1.0, s)
    # Probability of still running when reaching exit i: prod_{j<i} (1 - s_j).
    still_running = jnp.cumprod(1.0 - s, axis=0)
    reaching = jnp.concatenate([jnp.ones_like(s[:1]), still_running[:-1]], axis=0)
    return s * reaching


def exit_signals(all_logits: jax.Array) -> jax.Array:
    """r [L, B] for every exit (docs/method.md §3); r[0] has no previous exit and is 0."""
    r = exit_signal(all_logits[:-1], all_logits[1:])
    first = jnp.zeros((1, *all_logits.shape[1:-1]), r.dtype)  # Also right when L == 1.
    return jnp.concatenate([first, r], axis=0)


def mean_loss(losses: jax.Array) -> jax.Array:
    """(1/L) sum_i CE_i per example: [L, B] -> [B]."""
    return jnp.mean(losses, axis=0)


def weighted_loss(losses: jax.Array) -> jax.Array:
    """sum_i i * CE_i / sum_i i per example (1-based i): [L, B] -> [B]."""
    i = jnp.arange(1, losses.shape[0] + 1, dtype=losses.dtype)[:, None]
    return jnp.sum(i * losses, axis=0) / jnp.sum(i)


def soft_routing_loss(losses: jax.Array, q: jax.Array, lam: float) -> jax.Array:
    """sum_i q_i * CE_i + lam * (1/L) sum_i CE_i per example: [L, B] -> [B]."""
    chex.assert_equal_shape([losses, q])
    return jnp.sum(q * losses, axis=0) + lam * mean_loss(losses)


def _weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over the last axis weighted by `weights` [B] (all-zero weights give 0)."""
    return jnp.sum(x * weights, axis=-1) / jnp.maximum(jnp.sum(weights), 1e-9)


def exit_loss(
    all_logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    name: str = "soft_routing",
    delta: float = 0.1,
    tau: float = 0.1,
    lam: float = 1.0,
    num_classes: int,
    detach_routing: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch loss over all exits [L, B, C] and per-exit metrics (arrays of shape [L]).

    Metrics: `loss_per_exit`, `exit_probability` (mean q of soft routing, reported for every
    variant), `expected_exit` (1-based, under q), and `accuracy_per_exit` for classification.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid: {LOSSES}.")
    chex.assert_rank(all_logits, 3)
    chex.assert_axis_dimension(all_logits, 2, num_classes)
    chex.assert_shape([labels, weights], (all_logits.shape[1],))
    weights = weights.astype(jnp.float32)

    losses = per_exit_losses(all_logits, labels, num_classes, label_smoothing)
    q = soft_exit_probabilities(exit_signals(all_logits), delta=delta, tau=tau)
    if detach_routing:
        q = jax.lax.stop_gradient(q)
    if name == "mean":
        per_example = mean_loss(losses)
    elif name == "weighted":
        per_example = weighted_loss(losses)
    else:
        per_example = soft_routing_loss(losses, q, lam)
    loss = _weighted_mean(per_example, weights)

    exit_number = jnp.arange(1, all_logits.shape[0] + 1, dtype=jnp.float32)[:, None]
    metrics = {
        "loss_per_exit": _weighted_mean(losses, weights),
        "exit_probability": jax.lax.stop_gradient(_weighted_mean(q, weights)),
        "expected_exit": jax.lax.stop_gradient(
            _weighted_mean(jnp.sum(exit_number * q, axis=0), weights)
        ),
    }
    if num_classes > 1:
        correct = jnp.argmax(all_logits, axis=-1) == labels.astype(jnp.int32)[None]
        metrics["accuracy_per_exit"] = _weighted_mean(correct.astype(jnp.float32), weights)
    return loss, metrics
