"""Compute dtypes (`config.model.dtype`): what the dots and the activations are computed in.

Parameters are float32 in every mode; the modes differ in the dots' operands and in the
activations between them (everything elementwise: LayerNorm, softmax, gates, losses):

  float32    float32 throughout.
  bfloat16   bfloat16 dots and activations (logits are handed over in float32): accelerators.
  bf16_f32   bfloat16 dot operands, float32 accumulation and everything else float32: CPUs with
             bf16 dot instructions run such a dot at about twice the float32 rate, while a
             bfloat16 *result* runs slower than float32 there (issue 24).
  auto       bfloat16 on GPU/TPU; bf16_f32 on a CPU whose flags show bf16 dot instructions
             (`cpu_has_bf16_dot`); float32 elsewhere.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import jax
import jax.numpy as jnp

DTYPES = ("auto", "float32", "bfloat16", "bf16_f32")
ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")  # Backends where "auto" computes in bfloat16.
# x86 CPU flags (Linux /proc/cpuinfo) of instructions that dot bfloat16 pairs into float32.
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_dot_flags(cpuinfo: str) -> bool:
    """True when a `flags` line of /proc/cpuinfo text names a bf16 dot instruction."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and set(value.split()) & set(BF16_DOT_FLAGS):
            return True
    return False


@functools.cache
def cpu_has_bf16_dot() -> bool:
    """Whether this CPU has bf16 dot instructions: read from /proc/cpuinfo on Linux x86, once.

    False where it cannot tell (another OS or architecture, no /proc): the float32 default.
    """
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return bf16_dot_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve(dtype: str, backend: str, cpu_bf16: bool) -> str:
    """The mode `dtype` ("auto" or a mode of DTYPES) computes in on `backend`."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown model.dtype {dtype!r}; valid: {DTYPES}.")
    if dtype != "auto":
        return dtype
    if backend in ACCELERATORS:
        return "bfloat16"
    return "bf16_f32" if backend == "cpu" and cpu_bf16 else "float32"


def resolve_here(dtype: str) -> str:
    """`resolve` on this process's default backend and CPU."""
    backend = jax.default_backend()
    return resolve(dtype, backend, backend == "cpu" and cpu_has_bf16_dot())


def activation_dtype(mode: str) -> jnp.dtype:
    """Activations (and dot results) of a resolved mode."""
    return jnp.dtype(jnp.bfloat16 if mode == "bfloat16" else jnp.float32)


def dot_dtype(mode: str) -> jnp.dtype:
    """Dot operands of a resolved mode."""
    return jnp.dtype(jnp.float32 if mode == "float32" else jnp.bfloat16)
