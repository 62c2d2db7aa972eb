"""WordPiece tokenizer: vocab file or learned vocab, [CLS] a [SEP] b [SEP], truncation."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from beex_jax import data
from beex_jax.data import glue_builder, tokenizer


@pytest.fixture(scope="module")
def bert(bert_vocab_file):
    """The BERT uncased vocabulary as a tokenizer."""
    return tokenizer.tokenizer_from_vocab(str(bert_vocab_file))


def test_bert_vocab_special_ids_and_lowercase(bert):
    """[PAD]=0, BERT's ids for [CLS]/[SEP], lower-cased with accents stripped."""
    out = data.encode(bert, ["Hello WORLD, Héllo!"], max_length=10)
    tokens = [bert.id_to_token(i) for i in out["input_ids"][0, : out["length"][0]]]
    assert tokens == ["[CLS]", "hello", "world", ",", "hello", "!", "[SEP]"]
    assert bert.token_to_id("[PAD]") == 0 and out["input_ids"][0, 7:].tolist() == [0, 0, 0]
    assert out["mask"][0].tolist() == [1] * 7 + [0] * 3
    assert {k: v.dtype for k, v in out.items() if k != "truncated"} == dict.fromkeys(
        ("input_ids", "segment_ids", "mask", "length"), np.dtype(np.int32)
    )


def test_empty_text_is_cls_sep(bert):
    """Empty (or None) text encodes as [CLS] [SEP]; an empty pair as [CLS] [SEP] [SEP]."""
    single = data.encode(bert, ["", None], max_length=4)
    assert single["input_ids"].tolist() == [[101, 102, 0, 0]] * 2
    pair = data.encode(bert, [""], [""], max_length=4)
    assert pair["input_ids"].tolist() == [[101, 102, 102, 0]]
    assert pair["segment_ids"].tolist() == [[0, 0, 1, 0]] and pair["length"].tolist() == [3]


def test_pair_segments(bert):
    """Pairs are [CLS] a [SEP] b [SEP] with segment 1 on b and its [SEP]."""
    out = data.encode(bert, ["a b"], ["c"], max_length=8)
    assert out["input_ids"][0, :6].tolist() == [101, 1037, 1038, 102, 1039, 102]
    assert out["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_truncation_longest_first_and_logged(bert, caplog):
    """Overlong inputs are cut to max_length (the longer text first) and counted in a log."""
    with caplog.at_level(logging.INFO):
        out = data.encode(bert, ["a b c d e f g h", "a"], ["x y", "b"], max_length=8)
    assert out["length"].tolist() == [8, 5] and out["truncated"].tolist() == [True, False]
    tokens = [bert.id_to_token(i) for i in out["input_ids"][0]]
    assert tokens == ["[CLS]", "a", "b", "c", "[SEP]", "x", "y", "[SEP]"]
    assert "Truncated 1 of 2 inputs longer than max_length=8" in caplog.text


def test_max_length_too_small_is_refused(bert):
    """max_length must leave room for the special tokens."""
    with pytest.raises(ValueError, match="no room"):
        data.encode(bert, ["a"], ["b"], max_length=2)


def test_learned_vocab_is_deterministic():
    """Two learnings on the same text give the same vocabulary, ids included."""
    texts = ["the cat sat on the mat", "the dog sat on the log", "cats and dogs", "a mat, a log"]
    texts = texts * 3 + ["tie breaking matters for rare pairs like zq qz xy yx"]
    first = tokenizer.learn_vocab(texts, 80)
    assert all(tokenizer.learn_vocab(texts, 80) == first for _ in range(4))
    assert first[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def test_learned_task_vocab_is_cached_beside_the_data(make_config, tfds_dir):
    """The default learns WNLI's vocab from its train split once and reloads the file."""
    config = make_config("wnli", vocab_size=2000)
    tok = data.build_tokenizer(config)
    path = tokenizer.learned_vocab_path(config)
    builder = glue_builder.BeexGlue(config="wnli", data_dir=str(tfds_dir))
    assert os.path.dirname(path) == os.fspath(builder.data_dir)
    mtime = os.stat(path).st_mtime_ns
    assert data.build_tokenizer(config).get_vocab() == tok.get_vocab()
    assert os.stat(path).st_mtime_ns == mtime
    assert tok.token_to_id("[PAD]") == 0 and 1000 < tok.get_vocab_size() <= 2000
    out = data.encode(tok, ["The trophy doesn't fit"], ["It is too big"], max_length=16)
    assert tok.token_to_id("[UNK]") not in out["input_ids"][0, : out["length"][0]]


def test_text_fields():
    """The text features of single-sentence and pair tasks."""
    assert data.text_fields("sst2") == ("sentence",)
    assert data.text_fields("qnli") == ("question", "sentence")
    assert data.text_fields("mnli") == ("premise", "hypothesis")
