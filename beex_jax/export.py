"""The packed 1-bit model on disk (docs/method.md §6): its format, export of a workdir, size report.

An export directory holds everything prediction needs and no latent weights:

  manifest.json   format name and version, the parameter tree (every leaf's path, logical shape,
                  whether it is binarized and which array files hold it), and for every other file
                  its byte count and SHA-256, checked on load.
  config.json     the training run's config (config.model.vocab_size = rows of the embedding),
                  checksummed like every other file (an edited task, size or label set would
                  load silently wrong); change exit settings at load time instead
                  (`beex_jax.load(..., delta=...)`, `--config.exit.*` with --mode=predict).
  vocab.txt       the WordPiece vocabulary, UTF-8, one token a line, id = 0-based line number.
  arrays/*.npy    NumPy .npy files (format 1.0, little-endian, read with allow_pickle=False),
                  named by the leaf's path with "/" -> ".":
    <path>.bits.npy   uint8 [ceil(n / 8)]   a binarized leaf W of n entries: its signs in C order,
                                            8 per byte, most significant bit first, bit 1 = +1
                                            (sign(0) = +1), as `np.packbits`;
    <path>.alpha.npy  float32               its scales, W's shape with the reduced axis kept as 1:
                                            kernels [..., in, out] -> [..., 1, out] (one alpha per
                                            output unit); the token embedding [V, d] -> [V, 1]
                                            (one per token); per_tensor -> [..., 1, 1];
    <path>.npy        float32, the leaf's shape: every float parameter (biases, LayerNorm,
                                            position/segment embeddings, exit logit layers).
  size_report.json  bytes of the export vs the float32 counterpart (informational; the loader
                  does not read it, and the directory figures leave it out).

Binarized leaves are named `binary_kernel` / `binary_embedding`; the L stages are stacked on a
leading axis (`params["stages"]`). The loader (`beex_jax.export_loader`) rebuilds
`alpha * sign(W)` exactly and runs the model with `packed_weights=True`, so the binary leaves are
used as they are. A full-precision model (`model.binarize=False`) is exported all float32.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from beex_jax import binarize as bz
from beex_jax import checkpointing, packing
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.init_from import VOCAB_FILE as WORKDIR_VOCAB_FILE
from beex_jax.model import ModelConfig, init_params

Params = Any
FORMAT = "beex-jax-packed-model"
VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
REPORT_FILE = "size_report.json"
ARRAYS_DIR = "arrays"


class ExportError(ValueError):
    """An export directory that cannot be loaded: missing, truncated, foreign or inconsistent."""


# ----------------------------------------------------------------------------- parameter paths
def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten(params: Params) -> dict[str, Any]:
    """{"embed/token/binary_embedding": leaf, ...} in tree order."""
    return {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def unflatten(flat: Mapping[str, Any]) -> Params:
    """Inverse of `flatten`: nested dicts from "/"-joined paths."""
    tree: dict[str, Any] = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def _is_binary(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in bz.BINARY_PARAM_NAMES


def model_config_of(config: ml_collections.ConfigDict) -> ModelConfig:
    """The static model config of a run's config (vocab size included)."""
    return ModelConfig.from_config(config.model)


@functools.lru_cache(maxsize=16)
def abstract_params(model_config: ModelConfig) -> Params:
    """Shapes and dtypes of the parameters of `model_config` (nothing is computed)."""
    return jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))


def shape_differences(
    got: Mapping[str, tuple], expected: Mapping[str, tuple], limit: int = 4
) -> str:
    """What differs between two {path: shape} maps, the first `limit` items, as one line."""
    problems = [f"{k} is missing" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k} has shape {got[k]}, the config expects {expected[k]}"
        for k in expected
        if k in got and tuple(got[k]) != tuple(expected[k])
    ]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


# ----------------------------------------------------------------------------- size report
def _file_bytes(directory: str) -> dict[str, int]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = os.path.getsize(path)
    return out


def size_report(
    params: Params, model_config: ModelConfig, directory: str | None = None
) -> dict[str, Any]:
    """Bytes of the packed model vs its float32 counterpart, by group, and of the directory.

    `arrays`: the parameters only (packed bits + float32 alphas + float leaves), per group
    (embedding, blocks, exit_heads, float_leftovers). `directory` (when given): every file the
    loader reads, against the float32 arrays plus the same vocab.txt and config.json.
    """
    if model_config.binarize:
        arrays = packing.size_report(params, scale=model_config.scale)
    else:  # Nothing is packed: the export is its own float32 counterpart.
        count = sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))
        arrays = {
            "packed_bytes": 4 * count,
            "float32_bytes": 4 * count,
            "ratio": 1.0,
            "num_params": count,
            "groups": {
                "float_leftovers": {
                    "packed_bytes": 4 * count,
                    "float32_bytes": 4 * count,
                    "params": count,
                }
            },
        }
    report: dict[str, Any] = {"vocab_size": model_config.vocab_size, "arrays": arrays}
    if directory is not None:
        files = {k: v for k, v in _file_bytes(directory).items() if k != REPORT_FILE}
        on_disk = sum(files.values())
        npy = sum(v for k, v in files.items() if k.startswith(ARRAYS_DIR + os.sep))
        shared = files.get(VOCAB_FILE, 0) + files.get(CONFIG_FILE, 0)
        float_dir = arrays["float32_bytes"] + shared
        report["directory"] = {
            "bytes": on_disk,
            "arrays_bytes_with_npy_headers": npy,
            "manifest_bytes": files.get(MANIFEST_FILE, 0),
            "vocab_bytes": files.get(VOCAB_FILE, 0),
            "config_bytes": files.get(CONFIG_FILE, 0),
            "num_files": len(files),
            "float32_counterpart_bytes": float_dir,
            "ratio": float_dir / on_disk,
        }
    return report


def format_size_report(report: Mapping[str, Any]) -> str:
    """A few human-readable lines of `size_report`."""
    arrays = report["arrays"]
    lines = [
        f"vocabulary {report['vocab_size']} tokens, {arrays['num_params']:,} parameters",
        f"arrays:    {arrays['packed_bytes']:,} B packed vs {arrays['float32_bytes']:,} B float32"
        f" -> {arrays['ratio']:.2f}x smaller",
    ]
    for name, group in sorted(arrays["groups"].items()):
        ratio = group["float32_bytes"] / max(group["packed_bytes"], 1)
        lines.append(
            f"  {name:<16}{group['packed_bytes']:>12,} B vs {group['float32_bytes']:>12,} B"
            f" ({ratio:.2f}x, {group['params']:,} params)"
        )
    if "directory" in report:
        d = report["directory"]
        lines.append(
            f"directory: {d['bytes']:,} B in {d['num_files']} files (vocab {d['vocab_bytes']:,} B,"
            f" config {d['config_bytes']:,} B, manifest {d['manifest_bytes']:,} B) vs"
            f" {d['float32_counterpart_bytes']:,} B float32 + same vocab/config"
            f" -> {d['ratio']:.2f}x smaller"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writing
def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _array_file(name: str, suffix: str = "") -> str:
    return f"{ARRAYS_DIR}/{name.replace('/', '.')}{suffix}.npy"


def write_export(
    export_dir: str,
    params: Params,
    config: ml_collections.ConfigDict,
    vocab_file: str,
) -> dict[str, Any]:
    """Writes the packed model of (params, config) and its vocabulary; returns the size report.

    The directory is assembled beside `export_dir` and renamed into place, so a reader never
    sees half an export; an existing export there is replaced.
    """
    model_config = model_config_of(config)
    flat = {name: np.asarray(leaf, np.float32) for name, leaf in flatten(params).items()}
    expected = {
        name: tuple(leaf.shape) for name, leaf in flatten(abstract_params(model_config)).items()
    }
    got = {name: leaf.shape for name, leaf in flat.items()}
    if got != expected:
        raise ExportError(
            f"The parameters do not match config.model: {shape_differences(got, expected)}"
        )
    export_dir = os.path.abspath(os.path.expanduser(export_dir))
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        os.makedirs(os.path.join(staging, ARRAYS_DIR))
        arrays: dict[str, np.ndarray] = {}
        leaves: dict[str, dict[str, Any]] = {}
        for name, leaf in flat.items():
            entry: dict[str, Any] = {"shape": list(leaf.shape)}
            if model_config.binarize and _is_binary(name):
                packed = packing.pack_leaf(
                    leaf, name=name.rsplit("/", 1)[-1], scale=model_config.scale
                )
                entry.update(
                    binary=True, bits=_array_file(name, ".bits"), alpha=_array_file(name, ".alpha")
                )
                arrays[entry["bits"]] = packed[packing.BITS]
                arrays[entry["alpha"]] = packed[packing.ALPHA].astype(np.float32)
            else:
                entry.update(binary=False, value=_array_file(name))
                arrays[entry["value"]] = leaf
            leaves[name] = entry
        for relpath, array in arrays.items():
            np.save(os.path.join(staging, relpath), np.ascontiguousarray(array), allow_pickle=False)
        shutil.copyfile(os.path.expanduser(vocab_file), os.path.join(staging, VOCAB_FILE))
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        files = {}
        for relpath in [CONFIG_FILE, VOCAB_FILE, *arrays]:
            full = os.path.join(staging, relpath)
            files[relpath] = {"bytes": os.path.getsize(full), "sha256": sha256_file(full)}
            if relpath in arrays:
                files[relpath].update(
                    dtype=str(arrays[relpath].dtype), shape=list(arrays[relpath].shape)
                )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "task": config.task,
            "binarized": model_config.binarize,
            "scale": model_config.scale,
            "vocab_size": model_config.vocab_size,
            "params": leaves,
            "files": files,
        }
        with open(os.path.join(staging, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        report = size_report(unflatten(flat), model_config, staging)
        written = sum(array.nbytes for array in arrays.values())
        if written != report["arrays"]["packed_bytes"]:  # The report must describe the files.
            raise AssertionError(
                f"Wrote {written} array bytes, report says {report['arrays']['packed_bytes']}."
            )
        with open(os.path.join(staging, REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        if os.path.exists(export_dir):
            if not os.path.exists(os.path.join(export_dir, MANIFEST_FILE)):
                raise ExportError(f"{export_dir} exists and is not an export; not replacing it.")
            shutil.rmtree(export_dir)
        os.replace(staging, export_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return report


def vocab_file_of(config: ml_collections.ConfigDict, workdir: str | None = None) -> str:
    """The vocabulary file of a run: its workdir's own copy (vocab.txt) when there, else
    `data.vocab_file` or the learned one in data.tfds_dir (learned and cached on first use)."""
    if workdir is not None:
        path = os.path.join(os.path.expanduser(workdir), WORKDIR_VOCAB_FILE)
        if os.path.isfile(path):
            return path
    tokenizer_lib.build_tokenizer(config)
    return config.data.vocab_file or tokenizer_lib.learned_vocab_path(config)


def export(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    export_dir: str | None = None,
    which: str = "best",
) -> dict[str, Any]:
    """Exports the `which` checkpoint of a training workdir (default to workdir/export).

    `config` (the command line's, may be None) is only checked to name the same task; the model
    is described by the workdir's own config.json.
    """
    params, saved = checkpointing.restore_params(workdir, which)
    if config is not None and config.get("task") != saved.task:
        raise ExportError(
            f"--config is for task {config.get('task')!r} but {workdir} holds a "
            f"{saved.task!r} model."
        )
    export_dir = export_dir or os.path.join(workdir, "export")
    report = write_export(export_dir, jax.device_get(params), saved, vocab_file_of(saved, workdir))
    logging.info("Exported the %s checkpoint of %s to %s.", which, workdir, export_dir)
    print(format_size_report(report))
    return report
