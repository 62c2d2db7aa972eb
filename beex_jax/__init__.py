"""BEExformer in JAX/Flax: binarized early-exit transformer text classification (arXiv 2412.05225).

`beex_jax.load(path)` returns a `beex_jax.predict.Predictor` for a training workdir or an export
directory; it imports JAX and the model only when called, so `import beex_jax` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beex_jax.predict import Predictor

__all__ = ["load"]


def load(path: str, **kwargs: Any) -> Predictor:
    """A predictor with `.predict(texts)` for a training workdir or an export directory."""
    from beex_jax import predict  # Deferred: importing JAX is slow.

    return predict.load(path, **kwargs)
