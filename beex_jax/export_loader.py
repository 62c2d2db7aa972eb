"""Loading a packed export (`beex_jax.export` documents the format) without the latent weights.

Every file is checked against the manifest (present, byte count, SHA-256; config.json and vocab.txt
included), arrays are read with `allow_pickle=False`, and config.json is checked against the
arrays' shapes, so a missing, truncated, edited, foreign or mismatched file fails with an
`ExportError` naming it; a folder with arrays/ but no manifest is a damaged export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tokenizers

from beex_jax import binarize as bz
from beex_jax import checkpointing, packing
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.export import (
    ARRAYS_DIR,
    CONFIG_FILE,
    FORMAT,
    MANIFEST_FILE,
    VERSION,
    VOCAB_FILE,
    ExportError,
    abstract_params,
    flatten,
    model_config_of,
    sha256_file,
    shape_differences,
    unflatten,
)

Params = Any


def is_export(path: str) -> bool:
    """True when `path` is a directory holding an export manifest."""
    return os.path.isfile(os.path.join(os.path.expanduser(path), MANIFEST_FILE))


def looks_like_export(path: str) -> bool:
    """True when `path` has an export's arrays/ folder (with or without its manifest)."""
    return os.path.isdir(os.path.join(os.path.expanduser(path), ARRAYS_DIR))


def damaged_export_error(path: str) -> ExportError:
    """The error for an export folder without its manifest."""
    return ExportError(
        f"{path} is a damaged export: it has {ARRAYS_DIR}/ but no {MANIFEST_FILE}, so no file of "
        f"it can be checked. Export the training workdir again (--mode=export)."
    )


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
    if not os.path.isfile(path) and looks_like_export(export_dir):
        raise damaged_export_error(export_dir)
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
    uncovered = [name for name in (CONFIG_FILE, VOCAB_FILE) if name not in manifest["files"]]
    if uncovered:
        raise ExportError(
            f"{path} lists no checksum of {' or '.join(uncovered)}: written by an older beex-jax "
            f"or edited, so they cannot be checked. Export the training workdir again."
        )
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
        if sha256_file(path) != info["sha256"]:
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
            f"{shape_differences(stored, expected)}."
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
