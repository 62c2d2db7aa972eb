"""Tests of batched prediction: the Python API, input files, bad lines, pairs, batching."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

import beex_jax
from beex_jax import checkpointing, data, early_exit, export, export_loader, predict
from beex_jax.model import ModelConfig
from configs import glue

REPO = pathlib.Path(__file__).resolve().parents[1]
SENTENCES = ["a gripping , funny film", "dull", "", "the plot is thin but the cast is great", "ok"]


def _save_workdir(workdir: pathlib.Path, task: str, vocab_file: pathlib.Path) -> None:
    """A tiny random model saved as a training run would be: config.json and a best checkpoint."""
    config = glue.get_config(f"task={task},size=tiny").unlock()
    config.data.vocab_file = str(vocab_file)
    config.data.max_length = 32
    config.data.bucket_boundaries = (32,)
    config = config.copy_and_resolve_references()
    config.model.vocab_size = len(vocab_file.read_text(encoding="utf-8").splitlines())
    rng = np.random.default_rng(0)
    shapes = export.abstract_params(ModelConfig.from_config(config.model))
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
    checkpointing.write_config(config, str(workdir))
    ckpt = checkpointing.Checkpoints(str(workdir))
    ckpt.save_best(1, params, 0.5)
    ckpt.close()


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, bert_vocab_file) -> predict.Predictor:
    """A single-sentence predictor (random tiny SST-2 model, BERT vocabulary), batch 4."""
    workdir = tmp_path_factory.mktemp("sst2")
    _save_workdir(workdir, "sst2", bert_vocab_file)
    return beex_jax.load(str(workdir), batch_size=4)


@pytest.fixture(scope="module")
def rte(tmp_path_factory, bert_vocab_file) -> predict.Predictor:
    """A sentence-pair predictor (random tiny RTE model), batch 4."""
    workdir = tmp_path_factory.mktemp("rte")
    _save_workdir(workdir, "rte", bert_vocab_file)
    return beex_jax.load(str(workdir), batch_size=4)


def _run(predictor, tmp_path, name: str, content: str | bytes, **kwargs):
    """(summary, output records) of predicting a file with `content`."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / f"{name}.out.jsonl"
    try:
        summary = predict.predict_file(predictor, str(path), str(out), **kwargs)
    finally:
        records = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
    return summary, records


def _strip(records):
    return [{k: v for k, v in r.items() if k != "line"} for r in records]


# ----------------------------------------------------------------------------- Python API
def test_import_is_cheap():
    code = "import sys, beex_jax; assert 'jax' not in sys.modules and callable(beex_jax.load)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_file_prediction_takes_any_predictor_and_imports_none(tmp_path):
    """Imports run one way: predict_files reads files for whatever predictor it is given."""
    (tmp_path / "in.tsv").write_bytes(b"sentence\tlabel\nfine\t1\n\xff\t0\n")
    code = """if True:
        import sys
        from beex_jax import predict_files

        class Echo:  # The attributes of predict_files.TextPredictor.
            task, text_fields, text_columns = "sst2", ("sentence",), ("sentence",)
            batch_size, max_length, mode, num_exits = 8, 16, "early_exit", 3

            def predict(self, texts):
                return [dict(label=len(t[0]), exit_index=1, flops=5, truncated=0) for t in texts]

        summary = predict_files.predict_file(Echo(), "in.tsv", "out.jsonl", skip_bad_lines=True)
        assert summary["exit_histogram"] == [0, 1, 0] and summary["skipped"] == 1, summary
        assert "beex_jax.predict" not in sys.modules and "jax" not in sys.modules
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [2, 3] and records[0]["label"] == 4
    assert "not valid UTF-8" in records[1]["error"]


def test_predict_fields_and_batching(sst2):
    records = sst2.predict(SENTENCES)
    assert len(records) == len(SENTENCES)
    for r in records:
        assert set(r) == {
            "label",
            "label_name",
            "probabilities",
            "exit_index",
            "flops",
            "truncated",
        }
        assert r["label_name"] == ("negative", "positive")[r["label"]]
        assert r["label"] == int(np.argmax(r["probabilities"]))
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert 1 <= r["exit_index"] < sst2.model_config.num_layers  # min_exit_block = 2.
        assert r["flops"] > 0
    # Sorting by length, batches of 4 and padding rows change nothing: the reference runs all
    # examples in one unpadded batch.
    encoded = sst2.encode([(s,) for s in SENTENCES])
    want = early_exit.predict_full_depth(sst2.params, encoded, sst2.config)
    got = sst2.predict_encoded(encoded)
    np.testing.assert_array_equal(got["prediction"], want["prediction"])
    np.testing.assert_array_equal(got["exit_index"], want["exit_index"])
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
    assert [r["exit_index"] for r in records] == want["exit_index"].tolist()
    # One at a time (batch size 1) gives the same answers.
    assert sst2.predict(SENTENCES[1]) == [records[1]]


def test_full_depth_mode_answers_from_the_last_exit(sst2):
    full = predict.Predictor(
        sst2.params, sst2.config, sst2.tokenizer, mode="full_depth", batch_size=4
    )
    encoded = sst2.encode([(s,) for s in SENTENCES])
    got = full.predict_encoded(encoded)
    all_logits = early_exit.full_depth_logits(
        sst2.params,
        encoded["input_ids"],
        encoded["segment_ids"],
        encoded["mask"],
        model_config=sst2.model_config,
    )
    np.testing.assert_array_equal(got["prediction"], np.argmax(all_logits[-1], axis=-1))
    assert (got["exit_index"] == sst2.model_config.num_layers - 1).all()
    early = sst2.predict_encoded(encoded)
    assert (got["flops"] >= early["flops"]).all() and (got["flops"] > early["flops"]).any()


def test_regression_records_carry_a_score(bert_vocab_file):
    config = glue.get_config("task=stsb,size=tiny").copy_and_resolve_references()
    config.data.vocab_file = str(bert_vocab_file)
    tokenizer = data.build_tokenizer(config)
    config.model.vocab_size = tokenizer.get_vocab_size()
    shapes = export.abstract_params(ModelConfig.from_config(config.model))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    stsb = predict.Predictor(params, config, tokenizer)
    outputs = {
        "logits": np.array([[3.25], [0.5]], np.float32),
        "prediction": np.array([3.25, 0.5], np.float32),
        "exit_index": np.array([1, 2]),
        "flops": np.array([10.0, 20.0], np.float32),
    }
    records = stsb.records(outputs, np.array([False, True]))
    assert records == [
        {"score": 3.25, "exit_index": 1, "flops": 10, "truncated": False},
        {"score": 0.5, "exit_index": 2, "flops": 20, "truncated": True},
    ]


def test_more_compute_per_longer_example(sst2):
    short, long = sst2.predict(["ok", "a " * 20])
    if short["exit_index"] == long["exit_index"]:
        assert long["flops"] > short["flops"]


def test_pairs(rte):
    pairs = [("a man is playing a guitar .", "a man plays music ."), ("", ""), ("x", "y")]
    records = rte.predict(pairs)
    assert [r["label_name"] for r in records] == [
        ("entailment", "not_entailment")[r["label"]] for r in records
    ]
    assert rte.predict(pairs[0]) == records[:1]  # A bare pair is one example.
    with pytest.raises(ValueError, match="reads sentence pairs"):
        rte.predict(["just one sentence"])


def test_single_model_rejects_pairs(sst2):
    with pytest.raises(ValueError, match="reads single sentences"):
        sst2.predict([("a", "b")])
    assert sst2.predict([]) == []


@hypothesis.given(st.integers(1, 5000))
def test_batch_sizes_are_few_and_cover_every_count(batch_size):
    sizes = predict.batch_sizes(batch_size)
    assert sizes[-1] == batch_size and sizes[0] == 1 and list(sizes) == sorted(set(sizes))
    assert len(sizes) <= 2 + int(np.log(batch_size) / np.log(4))


# ----------------------------------------------------------------------------- input files
def test_formats_agree(sst2, tmp_path):
    lines = SENTENCES[:2] + SENTENCES[3:]
    _, plain = _run(sst2, tmp_path, "in.txt", "\n".join(lines) + "\n")
    _, tsv = _run(sst2, tmp_path, "in.tsv", "\n".join(lines))
    _, header = _run(
        sst2, tmp_path, "h.tsv", "sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in lines)
    )
    jsonl = "".join(json.dumps({"sentence": s}) + "\n" for s in lines)
    _, from_json = _run(sst2, tmp_path, "in.jsonl", jsonl)
    assert [r["line"] for r in plain] == [1, 2, 3, 4]
    assert [r["line"] for r in header] == [2, 3, 4, 5]  # The header is not an example.
    assert (
        _strip(plain) == _strip(tsv) == _strip(header) == _strip(from_json) == sst2.predict(lines)
    )


def test_empty_lines_are_predicted(sst2, tmp_path):
    summary, records = _run(
        sst2, tmp_path, "in.jsonl", '{"sentence": "fine"}\n\n   \n{"text": ""}\n'
    )
    assert summary["examples"] == 4 and len(records) == 4
    assert _strip(records[1:]) == sst2.predict(["", "", ""])


def test_overlong_line_is_truncated_and_logged(sst2, tmp_path, caplog):
    long_line = " ".join(["word"] * 100)
    with caplog.at_level(logging.INFO):
        summary, records = _run(sst2, tmp_path, "in.txt", f"short\n{long_line}\n{long_line}\n")
    assert summary["truncated"] == 2
    assert [r["truncated"] for r in records] == [False, True, True]
    assert "Truncated 2 of 3 inputs longer than max_length=32" in caplog.text
    cut = sst2.predict([" ".join(["word"] * 30)])[0]  # 30 words + [CLS], [SEP] = 32 tokens.
    assert _strip(records[1:2]) == [dict(cut, truncated=True)]


def test_bad_utf8_stops_with_file_and_line_keeping_earlier_output(sst2, tmp_path):
    content = b"good film\nbad film\nbroken \xff\xfe bytes\nlast\n"
    with pytest.raises(predict.BadInputError, match=r"in\.txt:3: not valid UTF-8"):
        _run(sst2, tmp_path, "in.txt", content)
    written = (tmp_path / "in.txt.out.jsonl").read_text().splitlines()
    assert [json.loads(line)["line"] for line in written] == [1, 2]


def test_bad_utf8_skipped(sst2, tmp_path):
    content = b"good film\nbroken \xff bytes\nlast\n"
    summary, records = _run(sst2, tmp_path, "in.txt", content, skip_bad_lines=True)
    assert summary["skipped"] == 1 and summary["examples"] == 2
    assert [r["line"] for r in records] == [1, 2, 3]
    assert "UTF-8" in records[1]["error"] and "label" not in records[1]


@pytest.mark.parametrize("skip", [False, True])
def test_malformed_json_line(sst2, tmp_path, skip):
    content = '{"sentence": "great"}\n{"sentence": "unterminated\n["a list"]\n{"sentence": "end"}\n'
    if not skip:
        with pytest.raises(predict.BadInputError, match=r"in\.jsonl:2: malformed JSON"):
            _run(sst2, tmp_path, "in.jsonl", content)
        written = (tmp_path / "in.jsonl.out.jsonl").read_text().splitlines()
        assert len(written) == 1 and json.loads(written[0])["line"] == 1
        return
    summary, records = _run(sst2, tmp_path, "in.jsonl", content, skip_bad_lines=True)
    assert summary["skipped"] == 2
    assert [("error" in r) for r in records] == [False, True, True, False]
    assert "not an object" in records[2]["error"]
    assert _strip([records[0], records[3]]) == sst2.predict(["great", "end"])


def test_json_without_the_text_field(sst2, tmp_path):
    with pytest.raises(predict.BadInputError, match=re.escape("in.jsonl:1: no text field")):
        _run(sst2, tmp_path, "in.jsonl", '{"review": "great"}\n')


def test_pair_files(rte, tmp_path):
    pairs = [("the cat sat .", "a cat sits ."), ("it rained .", "the ground is dry .")]
    want = rte.predict(pairs)
    _, no_header = _run(rte, tmp_path, "p.tsv", "".join(f"{a}\t{b}\n" for a, b in pairs))
    glue_tsv = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\tentailment\n" for i, (a, b) in enumerate(pairs)
    )
    _, header = _run(rte, tmp_path, "g.tsv", glue_tsv)
    jsonl = "".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in pairs)
    _, from_json = _run(rte, tmp_path, "p.jsonl", jsonl)
    assert _strip(no_header) == _strip(header) == _strip(from_json) == want
    with pytest.raises(predict.BadInputError, match=r"p2\.tsv:2: 1 tab-separated columns"):
        _run(rte, tmp_path, "p2.tsv", "a\tb\nonly one\n")


# ----------------------------------------------------------------------------- --mode=predict
def test_predict_entry_point_with_exit_override(sst2, tmp_path):
    (tmp_path / "in.txt").write_text("good\nbad\n")
    config = glue.get_config("task=sst2").unlock()
    config.exit.min_exit_block = 3  # Nobody exits before the last of the tiny model's 3 blocks.
    source = sst2.source
    summary = predict.predict(
        config, source, input_path=str(tmp_path / "in.txt"), output_path=str(tmp_path / "o")
    )
    assert summary["exit_histogram"] == [0, 0, 2]
    with pytest.raises(ValueError, match="task 'rte'"):
        predict.predict(
            glue.get_config("task=rte"),
            source,
            input_path=str(tmp_path / "in.txt"),
            output_path=str(tmp_path / "o"),
        )


@pytest.mark.slow
def test_command_line_predict_and_export(sst2, tmp_path):
    """`python -m beex_jax.main --mode=export|predict`: flags, routing, one-line errors."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # Compilation is the cost here.
    main = [sys.executable, "-m", "beex_jax.main", f"--workdir={sst2.source}"]
    export_dir = tmp_path / "export"
    done = subprocess.run(
        [*main, "--mode=export", f"--export_dir={export_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x smaller" in done.stdout and export_loader.is_export(str(export_dir))
    (tmp_path / "in.txt").write_bytes(b"fine\nbad \xff\nnever read\n")
    out = tmp_path / "out.jsonl"
    cli = [*main[:3], f"--workdir={export_dir}", "--mode=predict", f"--input={tmp_path / 'in.txt'}"]
    done = subprocess.run(
        [*cli, f"--output={out}"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "ERROR: " in done.stderr and "in.txt:2: not valid UTF-8" in done.stderr
    assert "Traceback" not in done.stderr
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1]
    assert json.loads(out.read_text())["label_name"] == sst2.predict("fine")[0]["label_name"]


# ----------------------------------------------------------------------------- output safety
def test_output_that_is_the_input_is_refused_in_any_spelling(sst2, tmp_path, monkeypatch):
    """Issue 12.1: `--output X --input X` truncated X to 0 bytes; now refused, X untouched."""
    path = tmp_path / "in.txt"
    path.write_text("good\nbad\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.txt").symlink_to(path)
    os.link(path, tmp_path / "hard.txt")
    monkeypatch.chdir(tmp_path / "sub")
    spellings = [str(path), "../in.txt", f"{tmp_path}/sub/../in.txt", "../link.txt", "../hard.txt"]
    for output in spellings:
        with pytest.raises(predict.BadInputError, match="is the input file"):
            predict.predict_file(sst2, str(path), output)
        assert path.read_text() == "good\nbad\n", output


def test_interrupted_predict_leaves_no_half_file(sst2, tmp_path, monkeypatch):
    """Predictions go to a temporary file renamed at the end: a crash keeps the old output."""
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    out = tmp_path / "out.jsonl"
    out.write_text("previous predictions\n")
    calls = []
    original = predict.Predictor.predict

    def crash_on_second_chunk(self, texts):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, texts)

    monkeypatch.setattr(predict.Predictor, "predict", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_file(sst2, str(tmp_path / "in.txt"), str(out), chunk_lines=4)
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]
    monkeypatch.undo()
    summary = predict.predict_file(sst2, str(tmp_path / "in.txt"), str(out), chunk_lines=4)
    assert summary["examples"] == 10 and len(out.read_text().splitlines()) == 10
    (tmp_path / "plain").touch()  # The mode any new file gets, not mkstemp's private 0600.
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
