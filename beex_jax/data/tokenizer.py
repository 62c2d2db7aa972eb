"""Lower-cased WordPiece tokenizer (the `tokenizers` library) and batch encoding.

The vocabulary is either a file (one token a line, e.g. BERT's uncased vocab) or learned from the
task's train split and cached beside the prepared data, so that a run, its restarts and predict.py
all see the same ids.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from beex_jax.data import glue_builder

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] must be id 0.
# Their ids in a learned vocabulary (which starts with them).
SPECIAL_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}


def _normalizer() -> normalizers.Normalizer:
    """BERT's uncased normalization: clean control chars, split CJK, lower-case, strip accents."""
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)


def tokenizer_from_vocab(vocab_file: str) -> Tokenizer:
    """A lower-cased WordPiece tokenizer over `vocab_file` that adds [CLS]/[SEP] and segments."""
    with open(os.path.expanduser(vocab_file), encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    vocab = {token: i for i, token in enumerate(tokens)}
    missing = [token for token in SPECIAL_TOKENS[:4] if token not in vocab]
    if missing or vocab.get("[PAD]") != 0:
        raise ValueError(
            f"Vocabulary {vocab_file} must hold [PAD] at id 0 and [UNK], [CLS], "
            f"[SEP]; missing {missing or ['[PAD] at id 0']}."
        )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def learn_vocab(texts: Sequence[str], vocab_size: int, min_frequency: int = 0) -> list[str]:
    """Learns a WordPiece vocabulary (ids in list order) from `texts`, deterministically.

    At most `vocab_size` tokens; with `min_frequency` > 1 only pairs seen at least that often are
    merged, so the size follows the corpus instead of filling up with pieces seen once or twice.

    The library's trainer gives its `##` continuation pieces ids in hash-map order, and merge
    ties are broken by id, so two runs can differ (huggingface/tokenizers#1794). Declaring every
    `##c` up front, sorted, fixes those ids and makes the result a function of the text alone.
    """
    normalizer, seen = _normalizer(), set()
    for start in range(0, len(texts), 1024):  # In pieces: one call on 100 MB takes gigabytes.
        seen.update(normalizer.normalize_str("\n".join(texts[start : start + 1024])))
    chars = sorted(seen - {" ", "\n"})
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=max(int(min_frequency), 0),
        show_progress=False,
        special_tokens=[*SPECIAL_TOKENS, *(f"##{c}" for c in chars)],
    )
    tokenizer.train_from_iterator(texts, trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return sorted(vocab, key=vocab.__getitem__)


def learned_vocab_path(config: ml_collections.ConfigDict) -> str:
    """Where the vocabulary learned for `config.task` is cached (beside its prepared data)."""
    builder = glue_builder.BeexGlue(
        config=config.task, data_dir=os.path.expanduser(config.data.tfds_dir)
    )
    name = f"wordpiece-{config.data.vocab_size}"
    min_frequency = int(config.data.get("vocab_min_frequency", 0))
    if min_frequency > 1:
        name += f"-min{min_frequency}"
    return os.path.join(os.fspath(builder.data_dir), f"{name}.txt")


def build_tokenizer(
    config: ml_collections.ConfigDict, train_texts: Iterable[str] | None = None
) -> Tokenizer:
    """Loads `config.data.vocab_file`, or learns (once, cached) a vocab from the train split.

    `train_texts` saves re-reading the train split when the caller already has its texts.
    """
    if config.data.vocab_file:
        return tokenizer_from_vocab(config.data.vocab_file)
    path = learned_vocab_path(config)
    if not os.path.exists(path):
        if train_texts is None:
            glue_builder.prepare(
                config.task,
                config.data.tfds_dir,
                glue_dir=config.data.glue_dir,
                manual_dir=config.data.manual_dir,
            )
            train_texts = split_texts(config.task, config.data.tfds_dir, "train")
        tokens = learn_vocab(
            list(train_texts),
            config.data.vocab_size,
            int(config.data.get("vocab_min_frequency", 0)),
        )
        # Written whole or not at all: several processes may learn the same file at once.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{token}\n" for token in tokens))
        os.replace(tmp, path)
        logging.info(
            "Learned a %d-token WordPiece vocabulary for %s: %s", len(tokens), config.task, path
        )
    return tokenizer_from_vocab(path)


def text_fields(task: str) -> tuple[str, ...]:
    """The text features of `task`, e.g. ("sentence",) or ("sentence1", "sentence2")."""
    return tuple(name for name, _ in glue_builder.task_spec(task).text_features)


def split_texts(task: str, tfds_dir: str, split: str) -> list[str]:
    """Every text of every example of a prepared split, field by field."""
    columns = glue_builder.read_split(task, tfds_dir, split)
    return [text for field in text_fields(task) for text in columns[field]]


def encode(
    tokenizer: Tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    *,
    max_length: int,
    log_truncation: bool = True,
) -> dict[str, np.ndarray]:
    """Encodes texts (or pairs) as `[CLS] a [SEP] (b [SEP])`, truncated and padded to max_length.

    Returns int32 `input_ids`, `segment_ids`, `mask` [N, max_length], the unpadded `length` [N]
    and `truncated` [N] (bool). Pairs are truncated longest-first.
    """
    min_length = 2 if texts_b is None else 3
    if max_length < min_length:
        raise ValueError(f"max_length={max_length} leaves no room for [CLS]/[SEP].")
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ValueError(f"{len(texts_a)} first texts but {len(texts_b)} second texts.")
    truncation = {
        "max_length": max_length,
        "stride": 0,
        "strategy": "longest_first",
        "direction": "right",
    }
    if tokenizer.truncation != truncation:  # Set once: it is shared, mutable tokenizer state.
        tokenizer.enable_truncation(max_length, strategy="longest_first")
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    clean_a = [text or "" for text in texts_a]
    inputs = (
        clean_a
        if texts_b is None
        else list(zip(clean_a, (text or "" for text in texts_b), strict=True))
    )
    encodings = tokenizer.encode_batch(inputs) if inputs else []
    n = len(encodings)
    input_ids = np.zeros((n, max_length), np.int32)
    segment_ids = np.zeros((n, max_length), np.int32)
    length = np.zeros((n,), np.int32)
    truncated = np.zeros((n,), bool)
    for i, encoding in enumerate(encodings):
        ids = encoding.ids
        length[i] = len(ids)
        input_ids[i, : len(ids)] = ids
        segment_ids[i, : len(ids)] = encoding.type_ids
        truncated[i] = bool(encoding.overflowing)
    mask = (np.arange(max_length)[None, :] < length[:, None]).astype(np.int32)
    if log_truncation and truncated.any():
        logging.info(
            "Truncated %d of %d inputs longer than max_length=%d tokens.",
            int(truncated.sum()),
            n,
            max_length,
        )
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "mask": mask,
        "length": length,
        "truncated": truncated,
    }
