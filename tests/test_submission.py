"""GLUE leaderboard files (issue 12.12): names, format and ids against the GLUE test files."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from beex_jax import checkpointing, export, predict, submission
from beex_jax.data import tokenizer as tokenizer_lib
from beex_jax.model import ModelConfig
from configs import glue

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(task: str, vocab_file: pathlib.Path, glue_dir, tfds_dir):
    config = glue.get_config(f"task={task},size=tiny").unlock()
    config.data.vocab_file = str(vocab_file)
    config.data.glue_dir = str(glue_dir)
    config.data.tfds_dir = str(tfds_dir)
    config.data.max_length = 32
    config.data.bucket_boundaries = (32,)
    config = config.copy_and_resolve_references()
    config.model.vocab_size = len(vocab_file.read_text(encoding="utf-8").splitlines())
    return config


def _params(config, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = export.abstract_params(ModelConfig.from_config(config.model))
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


def _predictor(task, vocab_file, glue_dir, tfds_dir) -> predict.Predictor:
    """A random tiny model of `task` (BERT vocabulary), batch 256."""
    config = _config(task, vocab_file, glue_dir, tfds_dir)
    tokenizer = tokenizer_lib.tokenizer_from_vocab(str(vocab_file))
    return predict.Predictor(_params(config), config, tokenizer, batch_size=256)


def _read_tsv(path: pathlib.Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _assert_matches_test_file(written: pathlib.Path, test_file: pathlib.Path) -> list[str]:
    """Header, one row per test row, ids in the test file's order; returns the predictions."""
    rows = _read_tsv(written)
    test = _read_tsv(test_file)
    assert rows[0] == ["index", "prediction"]
    assert len(rows) == len(test)  # Both have one header line.
    assert [r[0] for r in rows[1:]] == [r[0] for r in test[1:]]
    assert all(len(r) == 2 for r in rows)
    return [r[1] for r in rows[1:]]


def test_format_of_each_kind_of_prediction():
    names = ("entailment", "not_entailment")
    assert submission.format_prediction("rte", {"label": 1}, names) == "not_entailment"
    assert submission.format_prediction("sst2", {"label": 1}, ("negative", "positive")) == "1"
    assert submission.format_prediction("stsb", {"score": 7.25}, ()) == "5"
    assert submission.format_prediction("stsb", {"score": -0.5}, ()) == "0"
    assert submission.format_prediction("stsb", {"score": 3.125}, ()) == "3.125"


def test_rte_file_has_label_names_and_every_test_id(bert_vocab_file, glue_dir, tfds_dir, tmp_path):
    rte = _predictor("rte", bert_vocab_file, glue_dir, tfds_dir)
    written = submission.write_submission(
        rte, str(tmp_path), tfds_dir=str(tfds_dir), glue_dir=str(glue_dir)
    )
    assert written == {"RTE.tsv": 3000}
    got = _assert_matches_test_file(tmp_path / "RTE.tsv", glue_dir / "RTE" / "test.tsv")
    assert set(got) <= {"entailment", "not_entailment"}
    test = _read_tsv(glue_dir / "RTE" / "test.tsv")[1:6]
    want = [r["label_name"] for r in rte.predict([(r[1], r[2]) for r in test])]
    assert got[:5] == want


def test_stsb_scores_are_clipped_to_0_5(bert_vocab_file, glue_dir, tfds_dir, tmp_path):
    stsb = _predictor("stsb", bert_vocab_file, glue_dir, tfds_dir)
    stsb.params["stages"]["exit"]["logits"]["bias"] = np.full_like(
        stsb.params["stages"]["exit"]["logits"]["bias"], 4.0
    )  # Scores around 4 +- noise: some beyond 5.
    submission.write_submission(stsb, str(tmp_path), tfds_dir=str(tfds_dir), glue_dir=str(glue_dir))
    scores = np.array(
        _assert_matches_test_file(tmp_path / "STS-B.tsv", glue_dir / "STS-B" / "test.tsv"), float
    )
    assert scores.min() >= 0 and scores.max() <= 5 and (scores == 5).any()


def _fake_mnli(folder: pathlib.Path, glue_dir: pathlib.Path) -> None:
    """MNLI files of a few rows each (the real ones are not in the shared GLUE folder)."""
    (folder / "MNLI").mkdir(parents=True)
    pairs = ["a man sleeps .\tsomeone rests .", "it rains .\tthe street is dry ."] * 2
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        lines = [f"{i}\t{p}\tneutral\n" for i, p in enumerate(pairs)]
        (folder / "MNLI" / name).write_text(
            "index\tsentence1\tsentence2\tgold_label\n" + "".join(lines)
        )
    for name, n in (("test_matched.tsv", 4), ("test_mismatched.tsv", 3)):
        lines = [f"{i}\t{p}\n" for i, p in enumerate(pairs[:n])]
        (folder / "MNLI" / name).write_text("index\tsentence1\tsentence2\n" + "".join(lines))
    (folder / "diagnostic").mkdir()
    (folder / "diagnostic" / "diagnostic.tsv").symlink_to(
        glue_dir / "diagnostic" / "diagnostic.tsv"
    )


def test_mnli_writes_matched_mismatched_and_ax(bert_vocab_file, glue_dir, tmp_path):
    _fake_mnli(tmp_path / "glue", glue_dir)
    mnli = _predictor("mnli", bert_vocab_file, tmp_path / "glue", tmp_path / "tfds")
    written = submission.write_submission(
        mnli,
        str(tmp_path / "out"),
        tfds_dir=str(tmp_path / "tfds"),
        glue_dir=str(tmp_path / "glue"),
    )
    assert written == {"MNLI-m.tsv": 4, "MNLI-mm.tsv": 3, "AX.tsv": 1104}
    labels = {"entailment", "neutral", "contradiction"}
    for name, test in (
        ("MNLI-m.tsv", "MNLI/test_matched.tsv"),
        ("MNLI-mm.tsv", "MNLI/test_mismatched.tsv"),
        ("AX.tsv", "diagnostic/diagnostic.tsv"),
    ):
        got = _assert_matches_test_file(tmp_path / "out" / name, tmp_path / "glue" / test)
        assert set(got) <= labels, name


@pytest.mark.slow
def test_command_line_writes_the_wnli_file(bert_vocab_file, glue_dir, tfds_dir, tmp_path):
    """`--mode=predict --split=test --glue_submission DIR` on a training workdir: class ids."""
    config = _config("wnli", bert_vocab_file, glue_dir, tfds_dir)
    checkpointing.write_config(config, str(tmp_path / "run"))
    ckpt = checkpointing.Checkpoints(str(tmp_path / "run"))
    ckpt.save_best(1, _params(config), 0.5)
    ckpt.close()
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beex_jax.main",
            "--mode=predict",
            f"--workdir={tmp_path / 'run'}",
            "--split=test",
            f"--glue_submission={tmp_path / 'glue_out'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WNLI.tsv: 146 rows" in done.stdout
    got = _assert_matches_test_file(
        tmp_path / "glue_out" / "WNLI.tsv", glue_dir / "WNLI" / "test.tsv"
    )
    assert set(got) <= {"0", "1"}
