"""Word-vector pretraining: the latent transform, text files, end to end into fine-tuning."""

from __future__ import annotations

import gzip
import json
import lzma
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import training_runs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from beex_jax import failures, init_from, word_vectors
from beex_jax.data import corpus
from configs import pretrain as pretrain_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@settings(max_examples=40, deadline=None)
@given(
    vectors=hnp.arrays(
        np.float32, (12, 6), elements=st.floats(-50, 50, width=32, allow_subnormal=False)
    ),
    found=hnp.arrays(bool, 12).filter(np.any),
)
def test_latent_embedding_centres_scales_and_clips_rows_with_vectors(vectors, found):
    fresh = np.random.default_rng(0).normal(0, 0.02, (12, 6)).astype(np.float32)
    table = word_vectors.latent_embedding(vectors, found, fresh, 0.02)
    assert table.dtype == np.float32 and table.shape == (12, 6)
    np.testing.assert_array_equal(table[~found], fresh[~found])
    assert np.all(np.abs(table) <= 1.0)
    centred = vectors[found].astype(np.float64) - vectors[found].astype(np.float64).mean(0)
    spread = centred.std(axis=1)
    varied = spread > 1e-3
    np.testing.assert_allclose(table[found][varied].std(axis=1), 0.02, rtol=1e-3)
    # What the binarized forward pass sees: the signs of the centred vectors.
    clear = np.abs(centred) > 1e-3 * np.maximum(spread[:, None], 1e-6)
    assert np.all(np.sign(table[found])[clear] == np.sign(centred)[clear])


def test_latent_embedding_rejects_a_corpus_without_any_vocabulary_token():
    fresh = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="No vocabulary token has a word vector"):
        word_vectors.latent_embedding(np.ones((3, 2)), np.zeros(3, bool), fresh, 0.02)


LINES = ["A first review\u0085 with a NEL inside.", "", "  second line  ", "third"]


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_text_files_stream_plain_gzip_and_xz_split_on_newline_only(tmp_path, suffix):
    data = "\n".join(LINES).encode("utf-8")
    path = tmp_path / f"text.txt{suffix}"
    path.write_bytes({"": data, ".gz": gzip.compress(data), ".xz": lzma.compress(data)}[suffix])
    assert list(corpus.read_lines(str(path))) == [LINES[0], "second line", "third"]


def test_text_file_globs_and_lists(tmp_path):
    for name in ("b.txt", "a.txt", "c.log"):
        (tmp_path / name).write_text("x\n")
    paths = corpus.text_file_paths(f"{tmp_path}/*.txt, {tmp_path}/c.log")
    assert paths == [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.log")]
    assert corpus.text_file_paths("") == [] and corpus.text_file_paths(()) == []


def _one_line(error: BaseException) -> str:
    message = failures.error_message(error)
    assert message is not None and "\n" not in message, error
    return message


def test_bad_text_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        corpus.text_file_paths(str(tmp_path / "absent.txt.xz"))
    assert "absent.txt.xz is not a file" in _one_line(missing.value)
    with pytest.raises(FileNotFoundError) as unmatched:
        corpus.text_file_paths(str(tmp_path / "none_*.xz"))
    assert "no file matches" in _one_line(unmatched.value)

    corrupt = tmp_path / "corrupt.txt.xz"
    corrupt.write_bytes(lzma.compress(("line\n" * 20000).encode())[:-200])  # Truncated.
    with pytest.raises(corpus.TextFileError) as cut:
        list(corpus.read_lines(str(corrupt)))
    assert "corrupt or truncated" in _one_line(cut.value)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("good line\ncaf\u00e9 line\n".encode("latin-1"))
    with pytest.raises(corpus.TextFileError) as encoding:
        list(corpus.read_lines(str(latin1)))
    assert "line 2 is not UTF-8" in _one_line(encoding.value)


def _word_vector_command(workdir, tfds_dir, **overrides) -> list[str]:
    args = {
        "objective": "word_vectors",
        "word_vectors.epochs": 2,
        "word_vectors.workers": 1,
        "data.vocab_size": 1000,
        **overrides,
    }
    return [
        sys.executable, "-m", "beex_jax.main", "--mode=pretrain",
        "--config=configs/pretrain.py:size=tiny", f"--workdir={workdir}",
        f"--config.data.glue_dir={training_runs.glue_dir()}",
        f"--config.data.tfds_dir={tfds_dir}",
        *(f"--config.{k}={v}" for k, v in args.items()),
    ]  # fmt: skip


def test_empty_corpus_and_corrupt_file_end_in_one_line_from_the_command_line(tmp_path, tfds_dir):
    env = training_runs.environment(tmp_path / "xla_cache")
    empty = tmp_path / "empty.txt.gz"
    empty.write_bytes(gzip.compress(b"\n  \n"))
    corrupt = tmp_path / "corrupt.txt.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00 not really xz")
    for text_files, message in ((empty, "corpus is empty"), (corrupt, "corrupt or truncated")):
        cmd = _word_vector_command(
            tmp_path / "w", tfds_dir, **{"data.corpus_tasks": "", "data.text_files": text_files}
        )
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ERROR: ") and message in last, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def vector_workdir(tmp_path_factory, tfds_dir) -> tuple[pathlib.Path, dict]:
    """A word-vector stage on WNLI's train text plus a small .xz text file."""
    base = tmp_path_factory.mktemp("word_vectors")
    extra = base / "extra.txt.xz"
    extra.write_bytes(lzma.compress(b"a good film\na bad film\nthe film was good\n" * 50))
    env = training_runs.environment(base / "xla_cache")
    workdir = base / "vectors"
    overrides = {"data.corpus_tasks": "wnli", "data.text_files": extra}
    training_runs.run(_word_vector_command(workdir, tfds_dir, **overrides), env)
    return workdir, env


def test_word_vector_stage_writes_an_embedding_only_workdir(vector_workdir):
    workdir, _ = vector_workdir
    summary = json.loads((workdir / "summary.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    assert summary["corpus_tokens"] > 1000 and summary["tokens_with_vector"] > 100
    assert config["objective"] == "word_vectors"
    assert config["model"]["vocab_size"] == len((workdir / "vocab.txt").read_text().splitlines())
    params = init_from.load_params(str(workdir))
    assert list(params) == ["embed"] and list(params["embed"]) == ["token"]
    table = params["embed"]["token"]["binary_embedding"]
    assert table.shape == (config["model"]["vocab_size"], config["model"]["hidden_dim"])
    # Rows with a vector sit at the fresh init's scale: about 0.02 per row.
    assert np.median(table.std(axis=1)) == pytest.approx(0.02, rel=0.05)
    assert np.abs(table).max() <= 1.0


def test_fine_tuning_starts_from_exactly_the_word_vector_table(vector_workdir, tmp_path, tfds_dir):
    workdir, env = vector_workdir
    finetuned = tmp_path / "finetuned"
    overrides = {
        "init_from": workdir,
        "optim.body_lr_scale": 0.0,
        "num_train_steps": 2,
        "model.norm": "pre",  # Any architecture of the same width takes the embedding.
        "model.position": "alibi",
    }
    training_runs.run(training_runs.command(finetuned, tfds_dir, **overrides), env)
    config = json.loads((finetuned / "config.json").read_text())
    assert config["data"]["vocab_file"] == str(workdir / "vocab.txt")
    want = init_from.load_params(str(workdir))["embed"]["token"]["binary_embedding"]
    got = training_runs.final_params(finetuned)
    np.testing.assert_array_equal(got["['embed']['token']['binary_embedding']"], want)


def test_mlm_stage_starts_from_the_word_vectors(vector_workdir, tmp_path, tfds_dir):
    workdir, env = vector_workdir
    mlm = tmp_path / "mlm"
    cmd = _word_vector_command(
        mlm,
        tfds_dir,
        objective="mlm",
        init_from=workdir,
        **{
            "data.corpus_tasks": "wnli",
            "optim.body_lr_scale": 0.0,
            "num_train_steps": 2,
            "batch_size": 8,
            "eval_batch_size": 8,
            "data.heldout_rows": 8,
            "data.max_length": 32,
        },
    )
    training_runs.run(cmd, env)
    want = init_from.load_params(str(workdir))["embed"]["token"]["binary_embedding"]
    got = init_from.load_params(str(mlm))["embed"]["token"]["binary_embedding"]
    np.testing.assert_array_equal(got, want)


def test_word_vector_stage_cannot_start_from_another_workdir():
    config = pretrain_config.get_config("size=tiny").unlock()
    config.init_from = "runs/x"
    with pytest.raises(Exception, match=r"unset config\.init_from"):
        word_vectors.train_word_vectors(config, "unused", [], "unused")
