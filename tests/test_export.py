"""Tests of the packed export: size report, round trip, identity with the checkpoint, bad files."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import chex
import jax
import numpy as np
import pytest

from beex_jax import binarize as bz
from beex_jax import checkpointing, data, export, export_loader
from beex_jax.model import ModelConfig
from beex_jax.predict import Predictor, load
from configs import glue

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab(path: pathlib.Path, size: int) -> pathlib.Path:
    path.write_text("".join(f"{t}\n" for t in SPECIAL + [f"w{i}" for i in range(size - 5)]))
    return path


def _config(task: str = "rte", size: str = "tiny", **model):
    config = glue.get_config(f"task={task},size={size}").unlock()
    config.data.max_length = 32
    config.data.bucket_boundaries = (32,)
    config.data.vocab_size = 100
    for key, value in model.items():
        config.model[key] = value
    return config.copy_and_resolve_references()


def _binarized(path, w):
    """alpha * sign(w) as the training forward pass computes it, for binarized leaves."""
    name = str(path[-1].key)
    if name == bz.BINARY_KERNEL:
        return bz.binarize_kernel(w)
    if name == bz.BINARY_EMBEDDING:
        return bz.binarize_embedding(w)
    return w


def _random_params(config, seed: int = 0):
    """Random float32 parameters of the config's shapes (cheaper than running init)."""
    rng = np.random.default_rng(seed)
    shapes = export.abstract_params(ModelConfig.from_config(config.model))
    return jax.tree.map(lambda s: rng.uniform(-1, 1, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> pathlib.Path:
    """A random-init tiny RTE model exported with a 100-token vocabulary."""
    root = tmp_path_factory.mktemp("export")
    config = _config()
    export.write_export(
        str(root / "model"), _random_params(config), config, str(_vocab(root / "v.txt", 100))
    )
    return root / "model"


@pytest.fixture
def broken(export_dir, tmp_path) -> pathlib.Path:
    """A private copy of the export, to damage."""
    return pathlib.Path(shutil.copytree(export_dir, tmp_path / "copy"))


def test_default_config_size_ratio_from_shapes():
    # The default (small) SST-2 model with the default learned vocabulary size (16000).
    config = glue.get_config("task=sst2")
    model_config = ModelConfig.from_config(config.model)
    assert model_config.vocab_size == 16000
    report = export.size_report(export.abstract_params(model_config), model_config)
    arrays = report["arrays"]
    assert report["vocab_size"] == 16000
    assert arrays["ratio"] >= 21.3, export.format_size_report(report)
    assert arrays["ratio"] < 32
    assert set(arrays["groups"]) == {"embedding", "blocks", "exit_heads", "float_leftovers"}
    assert sum(g["packed_bytes"] for g in arrays["groups"].values()) == arrays["packed_bytes"]


def test_default_config_export_on_disk(tmp_path):
    """The real files of a default-size export match the report and are >= 21.3x smaller."""
    config = glue.get_config("task=sst2").copy_and_resolve_references()
    report = export.write_export(
        str(tmp_path / "model"),
        _random_params(config),
        config,
        str(_vocab(tmp_path / "v.txt", 16000)),
    )
    arrays = report["arrays"]
    stored = sum(np.load(p).nbytes for p in (tmp_path / "model" / export.ARRAYS_DIR).glob("*.npy"))
    assert stored == arrays["packed_bytes"]
    assert arrays["ratio"] >= 21.3
    directory = report["directory"]
    on_disk = sum(
        p.stat().st_size
        for p in (tmp_path / "model").rglob("*")
        if p.is_file() and p.name != export.REPORT_FILE
    )
    assert directory["bytes"] == on_disk
    assert directory["ratio"] < arrays["ratio"]  # Vocab, config and manifest cost something.
    on_file = json.loads((tmp_path / "model" / export.REPORT_FILE).read_text())
    assert on_file == json.loads(json.dumps(report))


def test_round_trip_gives_binarized_weights(tmp_path):
    config = _config()
    params = _random_params(config, seed=1)
    export.write_export(str(tmp_path / "m"), params, config, str(_vocab(tmp_path / "v", 100)))
    loaded, loaded_config, tokenizer = export_loader.load_export(str(tmp_path / "m"))
    assert loaded_config.model.packed_weights
    assert tokenizer.get_vocab_size() == 100
    expected = jax.jit(lambda p: jax.tree_util.tree_map_with_path(_binarized, p))(params)
    chex.assert_trees_all_close(loaded, expected, rtol=1e-6)
    # Every binarized leaf takes two values per alpha group: signs, exactly.
    for name, leaf in export.flatten(loaded).items():
        if name.endswith(bz.BINARY_KERNEL):
            np.testing.assert_array_equal(np.sign(leaf), np.sign(export.flatten(expected)[name]))


def test_full_precision_model_is_stored_float(tmp_path):
    config = _config(binarize=False)
    params = _random_params(config)
    report = export.write_export(
        str(tmp_path / "m"), params, config, str(_vocab(tmp_path / "v", 100))
    )
    assert report["arrays"]["ratio"] == 1.0
    loaded, loaded_config, _ = export_loader.load_export(str(tmp_path / "m"))
    assert not loaded_config.model.packed_weights
    chex.assert_trees_all_equal(loaded, params)


@pytest.fixture(scope="module")
def trained_rte(tfds_dir, tmp_path_factory) -> pathlib.Path:
    """The training tests' tiny RTE run (a few steps) by the command line, whole dev set."""
    import training_runs  # The training tests' helper; imported here, only this fixture trains.

    base = tmp_path_factory.mktemp("rte_run")
    command = training_runs.command(base / "run", tfds_dir, **{"data.max_eval_examples": -1})
    training_runs.run(command, training_runs.environment(base / "xla_cache"))
    return base / "run"


@pytest.mark.slow
def test_export_predicts_like_checkpoint_on_dev_set(trained_rte, tmp_path):
    report = export.export(None, str(trained_rte), export_dir=str(tmp_path / "export"))
    assert report["vocab_size"] == checkpointing.read_config(str(trained_rte)).model.vocab_size
    from_checkpoint = load(str(trained_rte))
    from_export = load(str(tmp_path / "export"))
    assert from_export.model_config.packed_weights
    batches = list(data.create_input(from_checkpoint.config).eval_batches("validation"))
    num_examples = sum(int(b["weight"].sum()) for b in batches)
    assert num_examples == 277  # The whole RTE dev set.
    exits_seen = set()
    for delta in (from_checkpoint.exit_config.delta, 0.0):  # 0: exit when entropy rises.
        for predictor in (from_checkpoint, from_export):
            predictor.exit_config = predictor.exit_config.replace(delta=delta)
        for batch in batches:
            inputs = {k: batch[k] for k in ("input_ids", "segment_ids", "mask")}
            want, got = from_checkpoint.run_batch(**inputs), from_export.run_batch(**inputs)
            keep = batch["weight"] > 0
            for key in ("prediction", "exit_index", "flops"):
                np.testing.assert_array_equal(got[key][keep], want[key][keep], err_msg=key)
            np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
            exits_seen.update(want["exit_index"][keep].tolist())
    assert len(exits_seen) > 1  # The comparison covers more than one exit.


# ----------------------------------------------------------------------------- bad exports
def _rewrite_json(path: pathlib.Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _first_array(directory: pathlib.Path, suffix: str = ".bits.npy") -> pathlib.Path:
    return sorted((directory / export.ARRAYS_DIR).glob(f"*{suffix}"))[0]


def test_loads_cleanly(export_dir):
    params, config, _ = export_loader.load_export(str(export_dir))
    assert config.task == "rte"
    assert isinstance(load(str(export_dir), batch_size=2), Predictor)
    assert "stages" in params


def test_missing_directory(tmp_path):
    with pytest.raises(export.ExportError, match="does not exist"):
        export_loader.load_export(str(tmp_path / "nowhere"))


def test_training_workdir_is_not_an_export(tmp_path):
    (tmp_path / checkpointing.CONFIG_FILE).write_text("{}")
    with pytest.raises(export.ExportError, match="training workdir"):
        export_loader.load_export(str(tmp_path))


def test_neither_workdir_nor_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        load(str(tmp_path))


def test_truncated_manifest(broken):
    manifest = broken / export.MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes()[:100])
    with pytest.raises(export.ExportError, match=re.escape("manifest.json is not valid JSON")):
        export_loader.load_export(str(broken))


def test_foreign_manifest(broken):
    (broken / export.MANIFEST_FILE).write_text(json.dumps({"format": "safetensors"}))
    with pytest.raises(export.ExportError, match="not a beex-jax-packed-model manifest"):
        export_loader.load_export(str(broken))


def test_newer_version(broken):
    _rewrite_json(broken / export.MANIFEST_FILE, lambda m: m.update(version=99))
    with pytest.raises(export.ExportError, match="version 99"):
        export_loader.load_export(str(broken))


def test_truncated_array(broken):
    path = _first_array(broken)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(export.ExportError, match=f"{path.name} is truncated"):
        export_loader.load_export(str(broken))


def test_missing_array(broken):
    path = _first_array(broken, ".alpha.npy")
    path.unlink()
    with pytest.raises(export.ExportError, match=f"{path.name} is missing"):
        export_loader.load_export(str(broken))


def test_replaced_array_same_size(broken):
    path = _first_array(broken)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # One byte of signs flipped: same size, different content.
    path.write_bytes(bytes(raw))
    with pytest.raises(export.ExportError, match=f"{path.name} does not match its SHA-256"):
        export_loader.load_export(str(broken))


def test_foreign_array_file_with_matching_manifest(broken):
    """A pickle where an array should be is refused even if the manifest was updated to it."""
    path = _first_array(broken, ".alpha.npy")
    np.save(path, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
    relpath = f"{export.ARRAYS_DIR}/{path.name}"

    def edit(manifest):
        manifest["files"][relpath].update(
            bytes=path.stat().st_size, sha256=export.sha256_file(str(path))
        )

    _rewrite_json(broken / export.MANIFEST_FILE, edit)
    with pytest.raises(export.ExportError, match=re.escape("not a readable .npy array")):
        export_loader.load_export(str(broken))


def test_truncated_vocab(broken):
    vocab = broken / export.VOCAB_FILE
    vocab.write_text("".join(vocab.read_text().splitlines(keepends=True)[:50]))
    with pytest.raises(export.ExportError, match=re.escape("vocab.txt is truncated")):
        export_loader.load_export(str(broken))


def _rewrite_config_and_its_checksum(directory: pathlib.Path, edit) -> None:
    """Edits config.json and updates the manifest to match: only the deeper checks remain."""
    path = directory / export.CONFIG_FILE
    _rewrite_json(path, edit)

    def update(manifest):
        manifest["files"][export.CONFIG_FILE].update(
            bytes=path.stat().st_size, sha256=export.sha256_file(str(path))
        )

    _rewrite_json(directory / export.MANIFEST_FILE, update)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["model"].update(num_heads=4),  # Same shapes, other computation.
        lambda c: c.update(task="wnli"),  # Same classes, label names swapped.
        lambda c: c["exit"].update(delta=0.5),
    ],
)
def test_edited_config_is_refused(broken, edit):
    """Issue 12.8: config.json is covered by the manifest's checksums."""
    path = broken / export.CONFIG_FILE
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))  # As written, but edited.
    with pytest.raises(
        export.ExportError,
        match=r"config\.json (does not match its SHA-256|is truncated|is longer)",
    ):
        load(str(broken))


def test_edited_vocabulary_is_refused(broken):
    vocab = broken / export.VOCAB_FILE
    lines = vocab.read_text().splitlines()
    lines[5], lines[6] = lines[6], lines[5]  # Two ids swapped: same size.
    vocab.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(export.ExportError, match=r"vocab\.txt does not match its SHA-256"):
        load(str(broken))


def test_missing_manifest_is_a_damaged_export(broken):
    """Issue 12.8: not 'a training workdir without best/'."""
    (broken / export.MANIFEST_FILE).unlink()
    for loader in (load, export_loader.load_export):
        with pytest.raises(export.ExportError, match=r"is a damaged export.*no manifest\.json"):
            loader(str(broken))


def test_manifest_without_config_checksum_is_refused(broken):
    """An export whose manifest does not cover config.json (older or edited) is not trusted."""
    _rewrite_json(broken / export.MANIFEST_FILE, lambda m: m["files"].pop(export.CONFIG_FILE))
    with pytest.raises(export.ExportError, match=r"lists no checksum of config\.json"):
        load(str(broken))


def test_config_that_does_not_match_the_arrays(broken):
    _rewrite_config_and_its_checksum(broken, lambda c: c["model"].update(hidden_dim=64))
    with pytest.raises(export.ExportError, match=r"does not match the arrays.*has shape"):
        export_loader.load_export(str(broken))


def test_config_with_other_vocab_size(broken):
    _rewrite_config_and_its_checksum(broken, lambda c: c["model"].update(vocab_size=99))
    with pytest.raises(export.ExportError, match="binary_embedding has shape"):
        export_loader.load_export(str(broken))


def test_config_of_a_float_model(broken):
    _rewrite_config_and_its_checksum(broken, lambda c: c["model"].update(binarize=False))
    with pytest.raises(export.ExportError, match=re.escape("model.binarize=False")):
        export_loader.load_export(str(broken))


def test_missing_config(broken):
    (broken / export.CONFIG_FILE).unlink()
    with pytest.raises(export.ExportError, match=re.escape("config.json is missing")):
        export_loader.load_export(str(broken))


def test_export_refuses_to_replace_a_foreign_directory(tmp_path):
    config = _config()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not an export"):
        export.write_export(
            str(tmp_path / "m"), _random_params(config), config, str(_vocab(tmp_path / "v", 100))
        )
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_params_that_do_not_match_the_config(tmp_path):
    config = _config()
    params = _random_params(_config(hidden_dim=16, num_heads=2))
    with pytest.raises(export.ExportError, match=re.escape("do not match config.model")):
        export.write_export(str(tmp_path / "m"), params, config, str(_vocab(tmp_path / "v", 100)))
