"""The packed 1-bit model on disk (SPEC §7): export a trained workdir, load it back, size report.

An export directory holds everything prediction needs and no latent weights:

  manifest.json   format name and version, the parameter tree (every leaf's path, logical shape,
                  whether it is binarized and which array files hold it), and for every other file
                  its byte count and SHA-256, checked on load.
  config.json     the training run's config (config.model.vocab_size = rows of the embedding);
                  not checksummed, so exit settings may be edited, but it must match the arrays.
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
leading axis (`params["stages"]`). The loader rebuilds `alpha * sign(W)` exactly and runs the model
with `packed_weights=True`, so the binary leaves are used as they are. A full-precision model
(`model.binarize=False`) is exported with every leaf float32.
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
import tokenizers

from beex_jax import binarize as bz
from beex_jax import checkpointing, packing
from beex_jax.data import tokenizer as tokenizer_lib
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
def _sha256(path: str) -> str:
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
        raise ExportError(f"The parameters do not match config.model: {_diff(got, expected)}")
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
        for relpath in [VOCAB_FILE, *arrays]:
            full = os.path.join(staging, relpath)
            files[relpath] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
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


def vocab_file_of(config: ml_collections.ConfigDict) -> str:
    """The vocabulary file a run's tokenizer reads (learned and cached on first use)."""
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
    report = write_export(export_dir, jax.device_get(params), saved, vocab_file_of(saved))
    logging.info("Exported the %s checkpoint of %s to %s.", which, workdir, export_dir)
    print(format_size_report(report))
    return report


# ----------------------------------------------------------------------------- loading
def is_export(path: str) -> bool:
    """True when `path` is a directory holding an export manifest."""
    return os.path.isfile(os.path.join(os.path.expanduser(path), MANIFEST_FILE))


def _diff(got: Mapping[str, tuple], expected: Mapping[str, tuple], limit: int = 4) -> str:
    problems = [f"{k} is missing" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k} has shape {got[k]}, the config expects {expected[k]}"
        for k in expected
        if k in got and tuple(got[k]) != tuple(expected[k])
    ]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def _read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise ExportError(f"{path} is missing: {what}.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON (truncated or foreign file?): {e}") from e


def read_manifest(export_dir: str) -> dict[str, Any]:
    """The manifest of `export_dir`, checked to be of this format and version."""
    if not os.path.isdir(export_dir):
        raise ExportError(f"{export_dir} does not exist or is not a directory.")
    path = os.path.join(export_dir, MANIFEST_FILE)
    hint = "not a beex-jax export" + (
        " (it looks like a training workdir: export it with --mode=export, or load the workdir)"
        if os.path.exists(os.path.join(export_dir, checkpointing.CONFIG_FILE))
        else ""
    )
    manifest = _read_json(path, hint)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ExportError(f"{path} is not a {FORMAT} manifest (format: {found!r}).")
    if manifest.get("version") != VERSION:
        raise ExportError(
            f"{path} has format version {manifest.get('version')!r}; this code "
            f"reads version {VERSION}."
        )
    for key in ("params", "files", "binarized", "scale"):
        if key not in manifest:
            raise ExportError(f"{path} has no {key!r} entry: truncated or edited.")
    return manifest


def verify_files(export_dir: str, manifest: Mapping[str, Any]) -> None:
    """Raises ExportError if a file listed in the manifest is missing, truncated or changed."""
    for relpath, info in manifest["files"].items():
        path = os.path.join(export_dir, relpath)
        if not os.path.isfile(path):
            raise ExportError(f"{path} is missing (listed in {MANIFEST_FILE}).")
        size = os.path.getsize(path)
        if size != info["bytes"]:
            kind = "truncated" if size < info["bytes"] else "longer than written"
            raise ExportError(
                f"{path} is {kind}: {size} bytes, {MANIFEST_FILE} says {info['bytes']}."
            )
        if _sha256(path) != info["sha256"]:
            raise ExportError(
                f"{path} does not match its SHA-256 in {MANIFEST_FILE}: the file "
                f"was changed or replaced."
            )


def _load_array(export_dir: str, relpath: str, info: Mapping[str, Any]) -> np.ndarray:
    path = os.path.join(export_dir, relpath)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ExportError(f"{path} is not a readable .npy array: {e}") from e
    if str(array.dtype) != info["dtype"] or list(array.shape) != list(info["shape"]):
        raise ExportError(
            f"{path} holds {array.dtype}{list(array.shape)}, {MANIFEST_FILE} says "
            f"{info['dtype']}{list(info['shape'])}."
        )
    return array


def _leaf(
    export_dir: str, manifest: Mapping[str, Any], name: str, entry: Mapping[str, Any], scale: str
) -> np.ndarray:
    """One parameter: a float array, or alpha * sign(W) rebuilt from bits and alphas."""
    files = manifest["files"]
    shape = tuple(entry["shape"])
    try:
        if not entry["binary"]:
            return _load_array(export_dir, entry["value"], files[entry["value"]])
        bits = _load_array(export_dir, entry["bits"], files[entry["bits"]])
        alpha = _load_array(export_dir, entry["alpha"], files[entry["alpha"]])
    except KeyError as e:
        raise ExportError(
            f"{MANIFEST_FILE}: the entry of {name} names {e}, which it does not "
            f"list among its files."
        ) from e
    axis = -2 if name.endswith(bz.BINARY_KERNEL) else -1
    alpha_shape = jax.eval_shape(
        lambda w: bz.scale_factor(w, scale=scale, axis=axis),
        jax.ShapeDtypeStruct(shape, np.float32),
    ).shape
    if alpha.shape != alpha_shape:
        raise ExportError(
            f"{name}: alphas of shape {alpha.shape}, scale={scale!r} needs {alpha_shape}."
        )
    try:
        return packing.unpack_leaf(
            {packing.BITS: bits, packing.ALPHA: alpha, packing.SHAPE: np.asarray(shape)}
        )
    except ValueError as e:
        raise ExportError(f"{name}: {e}") from e


def load_export(
    export_dir: str,
) -> tuple[Params, ml_collections.ConfigDict, tokenizers.Tokenizer]:
    """(params, config, tokenizer) of an export; binary leaves hold alpha * sign(W).

    The returned config has `model.packed_weights = True` when the model is binarized, so the
    model uses those leaves as they are. Every file is checked against the manifest and the
    config against the arrays; anything wrong raises ExportError naming it.
    """
    export_dir = os.path.expanduser(export_dir)
    manifest = read_manifest(export_dir)
    verify_files(export_dir, manifest)
    config_path = os.path.join(export_dir, CONFIG_FILE)
    config = ml_collections.ConfigDict(_read_json(config_path, "the model's config"))
    try:
        model_config = model_config_of(config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{config_path} has no valid model section: {e}") from e
    for key, value in (("binarize", manifest["binarized"]), ("scale", manifest["scale"])):
        if getattr(model_config, key) != value:
            raise ExportError(
                f"{config_path} says model.{key}={getattr(model_config, key)!r} but "
                f"the arrays were exported with {key}={value!r}."
            )
    expected = {k: tuple(v.shape) for k, v in flatten(abstract_params(model_config)).items()}
    stored = {k: tuple(v["shape"]) for k, v in manifest["params"].items()}
    if stored != expected:
        raise ExportError(
            f"{config_path} does not match the arrays of {MANIFEST_FILE}: "
            f"{_diff(stored, expected)}."
        )
    flat = {
        name: _leaf(export_dir, manifest, name, entry, model_config.scale)
        for name, entry in manifest["params"].items()
    }
    tokenizer = tokenizer_lib.tokenizer_from_vocab(os.path.join(export_dir, VOCAB_FILE))
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise ExportError(
            f"{VOCAB_FILE} has {tokenizer.get_vocab_size()} tokens but the model's "
            f"embedding has {model_config.vocab_size} rows."
        )
    config.model.packed_weights = model_config.binarize
    return unflatten(flat), config, tokenizer
