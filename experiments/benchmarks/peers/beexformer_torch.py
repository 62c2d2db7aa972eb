"""BEExformer in PyTorch, reading a beex-jax export: the peer that bench_peers.py times.

It needs only torch and numpy (no JAX), in a venv of its own, not requirements.txt's:

  python3 -m venv ../torchvenv && ../torchvenv/bin/pip install torch==2.13.0 numpy

The export format is documented in beex_jax/export.py; this file reads it with NumPy alone:
binarized leaves are rebuilt as alpha * sign(W) from their packed signs (np.unpackbits, bit 1 =
+1) and float32 alphas, so both implementations run on the same float32 weights. The forward pass
is docs/method.md §2 as beex_jax/model.py computes it at inference (no dropout): binarized token
embedding + learned positions (+ segments); per block, multi-head self-attention and the SLFN (or
the FFN ablation), post-LN (the paper) or pre-LN; an exit head after every block (masked mean
pool, Dense -> ReLU -> Dense). It returns the logits of every exit, [L, B, C], like
`beex_jax.early_exit.full_depth_logits`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's usual name)

LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default.


def _leaf(export_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    """One parameter of the export as float32: a float array, or alpha * sign(W) from its bits."""
    if not entry["binary"]:
        return np.load(export_dir / entry["value"], allow_pickle=False).astype(np.float32)
    shape = tuple(entry["shape"])
    bits = np.load(export_dir / entry["bits"], allow_pickle=False)
    alpha = np.load(export_dir / entry["alpha"], allow_pickle=False)
    signs = np.unpackbits(bits, count=math.prod(shape)).astype(np.float32) * 2 - 1
    return (alpha * signs.reshape(shape)).astype(np.float32)


def load_export(export_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({"embed/token/binary_embedding": array, ...}, config.json's model section)."""
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    model = json.loads((export_dir / "config.json").read_text())["model"]
    arrays = {name: _leaf(export_dir, entry) for name, entry in manifest["params"].items()}
    return arrays, model


class BEExformer(torch.nn.Module):
    """Token ids -> logits of every exit [L, B, C], on an export's weights (inference only)."""

    def __init__(self, arrays: dict[str, np.ndarray], model: dict[str, Any]):
        super().__init__()
        self.num_layers, self.num_heads = model["num_layers"], model["num_heads"]
        self.pre_ln = model.get("norm", "post") == "pre"
        self.slfn = model.get("slfn", True)
        self.weights = {}  # name -> tensor; kernels transposed to [out, in] for F.linear.
        for name, value in arrays.items():
            tensor = torch.from_numpy(value)
            if name.endswith(("kernel", "binary_kernel")):
                tensor = tensor.transpose(-1, -2)
            self.weights[name] = tensor.contiguous()

    def _w(self, name: str, layer: int | None = None) -> torch.Tensor:
        tensor = self.weights[name]
        return tensor if layer is None else tensor[layer]

    def _dense(self, x: torch.Tensor, prefix: str, layer: int) -> torch.Tensor:
        name = "kernel" if prefix.endswith("exit/logits") else "binary_kernel"
        return F.linear(x, self._w(f"{prefix}/{name}", layer), self._w(f"{prefix}/bias", layer))

    def _norm(self, x: torch.Tensor, prefix: str, layer: int) -> torch.Tensor:
        weight, bias = self._w(f"{prefix}/scale", layer), self._w(f"{prefix}/bias", layer)
        return F.layer_norm(x, x.shape[-1:], weight, bias, LAYER_NORM_EPS)

    def _attention(self, x: torch.Tensor, keep: torch.Tensor, layer: int) -> torch.Tensor:
        batch, length, dim = x.shape
        prefix = "stages/block/attention"

        def heads(name):
            y = self._dense(x, f"{prefix}/{name}", layer)
            return y.view(batch, length, self.num_heads, -1).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(heads("query"), heads("key"), heads("value"), keep)
        return self._dense(
            mixed.transpose(1, 2).reshape(batch, length, dim), f"{prefix}/out", layer
        )

    def _feed_forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        p = "stages/block/slfn" if self.slfn else "stages/block/ffn"
        if not self.slfn:
            hidden = F.gelu(self._dense(x, f"{p}/ffn_in", layer), approximate="tanh")
            return self._dense(hidden, f"{p}/ffn_out", layer)
        gate = self._dense(
            torch.sigmoid(self._dense(x, f"{p}/gate_in", layer)), f"{p}/gate_out", layer
        )
        content = self._dense(
            torch.tanh(self._dense(x, f"{p}/content_in", layer)), f"{p}/content_out", layer
        )
        return gate * content

    def forward(
        self, input_ids: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits of every exit [L, B, C] (float32)."""
        length = input_ids.shape[1]
        h = self._w("embed/token/binary_embedding")[input_ids]
        h = h + self._w("embed/position_embedding")[:length]
        if "embed/segment/embedding" in self.weights:
            h = h + self._w("embed/segment/embedding")[segment_ids]
        keep = mask.bool()[:, None, None, :]  # [B, 1, 1, T]: attend to real tokens only.
        weights = mask.to(h.dtype)[..., None]
        counts = weights.sum(dim=1).clamp_min(1)
        logits = []
        for layer in range(self.num_layers):
            block = "stages/block"
            if self.pre_ln:
                h = h + self._attention(
                    self._norm(h, f"{block}/attention_norm", layer), keep, layer
                )
                h = h + self._feed_forward(self._norm(h, f"{block}/slfn_norm", layer), layer)
                x = self._norm(h, "stages/exit/norm", layer)
            else:
                h = self._norm(
                    h + self._attention(h, keep, layer), f"{block}/attention_norm", layer
                )
                h = self._norm(h + self._feed_forward(h, layer), f"{block}/slfn_norm", layer)
                x = h
            pooled = (x * weights).sum(dim=1) / counts
            hidden = F.relu(self._dense(pooled, "stages/exit/hidden", layer))
            logits.append(self._dense(hidden, "stages/exit/logits", layer))
        return torch.stack(logits)


def load(export_dir: str | Path) -> BEExformer:
    """The PyTorch model of an export, in eval mode."""
    return BEExformer(*load_export(export_dir)).eval()
