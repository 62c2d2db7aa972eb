"""BEExformer (docs/method.md §2): binarized embedding, L blocks with SLFN, an exit per block.

The L stages (block + its exit head) are one `nn.scan`, so their parameters are stacked along a
leading axis of size L under `params["stages"]`. Full-depth training runs the scan; early-exit
inference (`beex_jax.exits`) slices stage `i` out of the stack with a dynamic index and applies a
single `Stage`, which is why `Embedder` and `Stage` are usable on their own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from beex_jax import binarize as bz
from beex_jax import precision
from beex_jax.config_fields import dataclass_from_section
from beex_jax.layers import (
    SLFN,
    BinaryDense,
    BinaryEmbed,
    FeedForward,
    MultiHeadAttention,
    dense_dot_general,
)

Params = Any
NORMS = ("post", "pre")
POSITIONS = ("learned", "alibi")
REMAT_MODES = ("auto", "none", "block")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static model hyper-parameters (the `config.model` section, hashable for Flax/jit)."""

    vocab_size: int
    num_classes: int
    num_layers: int = 6
    hidden_dim: int = 128
    num_heads: int = 4
    slfn_dim: int = 256
    exit_dim: int = 64
    dropout_rate: float = 0.1
    embedding_dropout_rate: float = 0.0  # Drops whole token vectors (before positions are added).
    max_length: int = 128
    type_vocab_size: int = 1
    binarize: bool = True
    slfn: bool = True
    norm: str = "post"  # post: LayerNorm after each residual add (the paper); pre: before.
    # learned: a position table added to the token embedding (the paper); alibi: no table,
    # attention penalised by distance (layers.alibi_bias), local from the first step.
    position: str = "learned"
    surrogate: str = "approx_sign"
    scale: str = "per_channel"
    detach_scale: bool = False
    binarize_activations: bool = False
    packed_weights: bool = False  # Binary leaves already hold alpha * sign(W) (exported model).
    # float32 | bfloat16 | bf16_f32 (bf16 dot operands, float32 accumulation and activations) |
    # auto: bfloat16 on GPU/TPU, bf16_f32 on CPUs with bf16 dots, else float32 (precision.py).
    dtype: str = "auto"
    # Training only. block: each stage's activations are recomputed in the backward pass from
    # its input (jax.checkpoint), not saved; none: saved. auto: block on CPU, where the step is
    # memory-bound and recomputing is faster (experiments/benchmarks/bench_roofline.py), none on
    # GPU/TPU.
    remat: str = "auto"

    @classmethod
    def from_config(cls, model_config: Any) -> ModelConfig:
        """Builds from a `config.model` ConfigDict (or any mapping); unknown keys are an error."""
        return dataclass_from_section(cls, model_config, "model")

    @property
    def compute_dtype(self) -> str:
        """The mode `dtype` resolves to here ("auto" by backend and CPU; `beex_jax.precision`)."""
        return precision.resolve_here(self.dtype)

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The compute dtype of activations and dot results (parameters stay float32)."""
        return precision.activation_dtype(self.compute_dtype)

    @property
    def dot_dtype(self) -> jnp.dtype:
        """The dtype of dot operands (`beex_jax.layers.einsum`)."""
        return precision.dot_dtype(self.compute_dtype)

    @property
    def remat_blocks(self) -> bool:
        """Whether training recomputes each block's activations (`remat` resolved here)."""
        if self.remat not in REMAT_MODES:
            raise ValueError(f"model.remat must be one of {REMAT_MODES}, not {self.remat!r}.")
        if self.remat == "auto":
            return jax.default_backend() not in precision.ACCELERATORS
        return self.remat == "block"

    def for_inference(self) -> ModelConfig:
        """This config as served: binary leaves hold alpha * sign(W) when binarized."""
        return dataclasses.replace(self, packed_weights=self.binarize)

    def dense(self) -> Any:
        """BinaryDense with this config's binarization options bound."""
        return functools.partial(
            BinaryDense,
            binarize=self.binarize,
            surrogate=self.surrogate,
            scale=self.scale,
            detach_scale=self.detach_scale,
            binarize_inputs=self.binarize_activations,
            packed_weights=self.packed_weights,
            dtype=self.activation_dtype,
            dot_dtype=self.dot_dtype,
        )


class Embedder(nn.Module):
    """Binarized token embedding (-> token dropout) + learned positions (+ segments) -> dropout."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, segment_ids: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_length:
            raise ValueError(f"Sequence length {length} exceeds max_length {cfg.max_length}.")
        h = BinaryEmbed(
            cfg.vocab_size,
            cfg.hidden_dim,
            binarize=cfg.binarize,
            surrogate=cfg.surrogate,
            scale=cfg.scale,
            detach_scale=cfg.detach_scale,
            packed_weights=cfg.packed_weights,
            dtype=cfg.activation_dtype,
            name="token",
        )(input_ids)
        if cfg.embedding_dropout_rate > 0:  # One decision per token: its whole vector, rescaled.
            h = nn.Dropout(cfg.embedding_dropout_rate, broadcast_dims=(2,), name="token_dropout")(
                h, deterministic=deterministic
            )
        if cfg.position not in POSITIONS:
            raise ValueError(f"Unknown model.position {cfg.position!r}; valid: {POSITIONS}.")
        if cfg.position == "learned":
            positions = self.param(
                "position_embedding",
                nn.initializers.normal(stddev=0.02),
                (cfg.max_length, cfg.hidden_dim),
                jnp.float32,
            )
            h = h + positions[None, :length].astype(h.dtype)
        if cfg.type_vocab_size > 1:
            segments = nn.Embed(
                cfg.type_vocab_size,
                cfg.hidden_dim,
                embedding_init=nn.initializers.normal(stddev=0.02),
                name="segment",
            )(segment_ids)
            h = h + segments.astype(h.dtype)
        return nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class Block(nn.Module):
    """Transformer block: attention, then SLFN (or the FFN ablation), each a residual branch.

    Post-LN (the paper): h = LN(h + f(h)). Pre-LN: h = h + f(LN(h)), whose residual stream is
    not normalized, so every reader of it (exit heads, the MLM head) normalizes first.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        if cfg.norm not in NORMS:
            raise ValueError(f"Unknown model.norm {cfg.norm!r}; valid: {NORMS}.")
        dense = cfg.dense()
        dtype = cfg.activation_dtype
        attention_norm = nn.LayerNorm(dtype=dtype, name="attention_norm")
        slfn_norm = nn.LayerNorm(dtype=dtype, name="slfn_norm")
        pre = cfg.norm == "pre"

        x = attention_norm(h) if pre else h
        a = MultiHeadAttention(
            cfg.num_heads, dense, dtype=dtype, alibi=cfg.position == "alibi", name="attention"
        )(x, mask)
        a = nn.Dropout(cfg.dropout_rate)(a, deterministic=deterministic)
        h = h + a if pre else attention_norm(h + a)
        x = slfn_norm(h) if pre else h
        if cfg.slfn:
            s = SLFN(cfg.slfn_dim, dense, name="slfn")(x)
        else:
            s = FeedForward(4 * cfg.hidden_dim, dense, name="ffn")(x)
        s = nn.Dropout(cfg.dropout_rate)(s, deterministic=deterministic)
        return h + s if pre else slfn_norm(h + s)


def masked_mean(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the non-pad positions of `h` [B, T, d] -> [B, d]."""
    weights = mask.astype(h.dtype)[..., None]
    return jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)


class ExitHead(nn.Module):
    """Masked mean pool -> binarized Dense(exit_dim) -> ReLU -> float Dense(num_classes)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.norm == "pre":  # The pre-LN residual stream is not normalized.
            h = nn.LayerNorm(dtype=cfg.activation_dtype, name="norm")(h)
        pooled = masked_mean(h, mask)
        hidden = nn.relu(cfg.dense()(cfg.exit_dim, name="hidden")(pooled))
        logits = nn.Dense(
            cfg.num_classes,
            dtype=cfg.activation_dtype,
            dot_general=dense_dot_general(cfg.activation_dtype, cfg.dot_dtype),
            name="logits",
        )(hidden)
        return logits.astype(jnp.float32)


class Stage(nn.Module):
    """One block and the exit head after it: h -> (h', logits)."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = Block(self.config, name="block")(h, mask, deterministic=self.deterministic)
        return h, ExitHead(self.config, name="exit")(h, mask)


class BEExformer(nn.Module):
    """Token ids -> logits of every exit, shape [num_layers, batch, num_classes]."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        mask: jax.Array,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        chex.assert_rank([input_ids, segment_ids, mask], 2)
        chex.assert_equal_shape([input_ids, segment_ids, mask])
        h = Embedder(cfg, name="embed")(input_ids, segment_ids, deterministic=deterministic)
        stages = nn.scan(
            rematted(Stage, cfg),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast,
            length=cfg.num_layers,
        )
        _, logits = stages(cfg, deterministic, name="stages")(h, mask)
        chex.assert_shape(logits, (cfg.num_layers, input_ids.shape[0], cfg.num_classes))
        return logits


def rematted(module: type[nn.Module], config: ModelConfig) -> type[nn.Module]:
    """`module` recomputed in the backward pass when `config.remat_blocks`, else as it is.

    `prevent_cse=False`: the module is a scan body, where no common-subexpression elimination
    can merge the recomputation with the forward pass (the `jax.checkpoint` docs).
    """
    return nn.remat(module, prevent_cse=False) if config.remat_blocks else module


def stage_params(params: Params, index: jax.Array | int) -> Params:
    """Parameters of stage `index` (0-based, may be traced) sliced out of the stacked scan."""
    return jax.tree.map(
        lambda x: jax.lax.dynamic_index_in_dim(x, index, axis=0, keepdims=False),
        params["stages"],
    )


def inference_params(params: Params, config: ModelConfig) -> tuple[Params, ModelConfig]:
    """(params, config) to serve: binary leaves hold alpha * sign(W), binarized once, not per call.

    The returned config has `packed_weights=True`, so the forward pass uses those leaves as they
    are; its outputs equal the latent model's. A float or already packed model is returned as is.
    """
    if not config.binarize or config.packed_weights:
        return params, config
    return bz.binarize_params(params, scale=config.scale), config.for_inference()


def init_params(config: ModelConfig, rng: jax.Array, length: int | None = None) -> Params:
    """Initial parameters (the `params` collection) for batches of `length` tokens."""
    length = length or min(config.max_length, 16)
    ids = jnp.zeros((1, length), jnp.int32)
    return BEExformer(config).init(rng, ids, ids, jnp.ones_like(ids))["params"]
