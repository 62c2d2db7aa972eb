"""Unlabeled text for MLM pretraining: collected, deduplicated, tokenized, packed, batched.

Sources (`config.data`):
  corpus_tasks  GLUE tasks whose *train* text is used ("auto": every task with local train files
                in glue_dir); dev and test text never enter the corpus, so there is no leakage
                into the GLUE dev figures. Pair tasks keep a pair together (segments 0 and 1).
  text_files    plain-text files (comma-separated paths or glob patterns; `.xz` and `.gz` are
                decompressed as they are read), one document or sentence a line;
  tfds_text     any TFDS dataset with a text feature (`text_key`, `tfds_split`), e.g.
                `wikipedia/20230601.en` or `c4/en` for users with a network or a prepared copy.
Units are deduplicated exactly, and a single text contained in a longer one is dropped
(`drop_contained_texts`: SST-2's train set is mostly sub-phrases of its sentences).

Packing: the units' tokens (`a [SEP]` or `a [SEP] b [SEP]`) form one stream, cut into rows of
`[CLS]` + max_length - 1 tokens, so no row is padded but the last. Batching is a pure function
of (seed, step), as in the GLUE pipeline: each epoch is a seeded permutation of the rows, each
process takes its slice of every global batch, and the grain iterator's state is the step.
Held-out rows (masked-token accuracy) come from the same tasks' *dev* text, packed the same way
(without GLUE tasks: the last 2% of the corpus, left out of training).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import logging
import lzma
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tokenizers

from beex_jax.config_fields import ConfigError
from beex_jax.data import glue_builder
from beex_jax.data import tokenizer as tokenizer_lib

Unit = tuple[str, ...]  # One text, or a sentence pair.
_ENDLESS = 2**62


def local_train_tasks(glue_dir: str | None) -> list[str]:
    """GLUE tasks whose train (and dev) files are in `glue_dir`."""
    tasks = []
    for task in glue_builder.TASKS:
        if task == "ax" or glue_dir is None:
            continue
        try:
            glue_builder.glue_dir_files(task, glue_dir)
        except FileNotFoundError:
            continue
        tasks.append(task)
    return tasks


def corpus_tasks(config: ml_collections.ConfigDict) -> list[str]:
    """The GLUE tasks the corpus reads (`config.data.corpus_tasks`, "auto": the local ones)."""
    asked = config.data.corpus_tasks
    if asked == "auto":
        if not config.data.glue_dir:
            return [t for t in glue_builder.TASKS if t != "ax"]  # Downloaded by TFDS.
        return local_train_tasks(config.data.glue_dir)
    tasks = [t.strip() for t in asked.split(",") if t.strip()] if asked else []
    unknown = sorted(set(tasks) - set(glue_builder.TASKS))
    if unknown:
        raise ValueError(f"Unknown GLUE tasks {unknown} in config.data.corpus_tasks.")
    return tasks


def glue_units(config: ml_collections.ConfigDict, split: str) -> list[Unit]:
    """The text of `split` of every corpus task, a unit per example."""
    units: list[Unit] = []
    data = config.data
    for task in corpus_tasks(config):
        glue_builder.prepare(
            task, data.tfds_dir, glue_dir=data.glue_dir, manual_dir=data.manual_dir
        )
        splits = ["validation_matched"] if task == "mnli" and split == "validation" else [split]
        for name in splits:
            columns = glue_builder.read_split(task, data.tfds_dir, name)
            fields = tokenizer_lib.text_fields(task)
            units.extend(zip(*(columns[f] for f in fields), strict=True))
    return units


class TextFileError(ValueError):
    """An unlabeled text file that cannot be read: corrupt, truncated or not UTF-8."""


def text_file_paths(spec: str | Sequence[str]) -> list[str]:
    """The files `config.data.text_files` names: comma-separated paths or glob patterns."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        pattern = os.path.expanduser(item)
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"config.data.text_files: no file matches {item}.")
            paths.extend(matches)
        elif not os.path.isfile(pattern):
            raise FileNotFoundError(f"config.data.text_files: {item} is not a file.")
        else:
            paths.append(pattern)
    return paths


_OPENERS = {".xz": lzma.open, ".gz": gzip.open}
# What a damaged compressed file raises while it is read.
_CORRUPT = (lzma.LZMAError, gzip.BadGzipFile, zlib.error, EOFError)


def read_lines(path: str) -> Iterator[str]:
    """The non-empty lines of a plain, `.gz` or `.xz` UTF-8 file, stripped, read as a stream.

    Lines end at "\n" only (not at U+0085 or other Unicode breaks, which real text holds).
    """
    opener = _OPENERS.get(os.path.splitext(path)[1], open)
    line_number = 0
    try:
        with opener(path, "rb") as f:  # Binary lines end at b"\n" only.
            for line_number, raw in enumerate(f, 1):  # noqa: B007 (read in the except)
                line = raw.decode("utf-8").strip()
                if line:
                    yield line
    except UnicodeDecodeError as e:
        raise TextFileError(
            f"{path}: line {line_number} is not UTF-8 text ({e.reason} at byte {e.start}); "
            f"re-encode the file as UTF-8."
        ) from e
    except _CORRUPT as e:
        raise TextFileError(
            f"{path} cannot be decompressed after {line_number} lines: the file is corrupt or "
            f"truncated ({type(e).__name__}: {e})."
        ) from e


def file_units(paths: Iterable[str]) -> list[Unit]:
    """One unit per non-empty line of each text file (plain, .gz or .xz)."""
    return [(line,) for path in paths for line in read_lines(path)]


def tfds_units(name: str, split: str, text_key: str, data_dir: str) -> list[Unit]:
    """One unit per example of a TFDS dataset's text feature."""
    source = tfds.data_source(name, split=split, data_dir=os.path.expanduser(data_dir))
    units = []
    for example in source:
        text = example[text_key]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        units.extend((line.strip(),) for line in text.split("\n") if line.strip())
    return units


def deduplicate(units: Sequence[Unit], drop_contained: bool = True) -> list[Unit]:
    """Units without exact duplicates (case- and space-insensitive), first occurrence kept, and
    (with `drop_contained`) without single texts whose words occur, in order, inside a longer
    kept text (SST-2's sub-phrases of its sentences)."""
    seen, out = set(), []
    for unit in units:
        key = tuple(_normalize(t) for t in unit)
        if key not in seen and any(key):
            seen.add(key)
            out.append(unit)
    if not drop_contained:
        return out
    # Longest first; a candidate is looked for only in kept texts holding its rarest word.
    kept_texts: list[str] = []
    by_word: dict[str, list[int]] = {}

    def keep_text(text: str) -> None:
        index = len(kept_texts)
        kept_texts.append(f" {text} ")
        for word in set(text.split()):
            by_word.setdefault(word, []).append(index)

    for unit in out:
        if len(unit) > 1:
            for text in unit:
                keep_text(_normalize(text))
    singles = sorted((i for i, u in enumerate(out) if len(u) == 1), key=lambda i: -len(out[i][0]))
    keep = set()
    for i in singles:
        text = _normalize(out[i][0])
        words = set(text.split())
        candidates = min((by_word.get(w, []) for w in words), key=len)
        if any(f" {text} " in kept_texts[j] for j in candidates):
            continue
        keep.add(i)
        keep_text(text)
    return [u for i, u in enumerate(out) if len(u) > 1 or i in keep]


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def collect_units(config: ml_collections.ConfigDict) -> list[Unit]:
    """The deduplicated pretraining corpus of `config.data`."""
    data = config.data
    units = glue_units(config, "train")
    units += file_units(text_file_paths(data.text_files or ()))
    if data.tfds_text:
        units += tfds_units(data.tfds_text, data.tfds_split, data.text_key, data.tfds_dir)
    if not units:
        raise ValueError(
            "The pretraining corpus is empty: no GLUE train files (config.data.glue_dir), "
            "config.data.text_files or config.data.tfds_text."
        )
    return deduplicate(units, bool(data.drop_contained_texts))


def unit_texts(units: Iterable[Unit]) -> list[str]:
    """Every text of the units (to learn a vocabulary from)."""
    return [text for unit in units for text in unit]


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """Token rows [N, max_length]: [CLS] then the token stream; only the last row padded."""

    input_ids: np.ndarray  # int32
    segment_ids: np.ndarray  # int8
    mask: np.ndarray  # int8
    num_tokens: int  # Stream tokens packed (without the [CLS] of each row).

    def __len__(self) -> int:
        return len(self.input_ids)


def token_stream(
    tokenizer: tokenizers.Tokenizer, units: Sequence[Unit]
) -> tuple[np.ndarray, np.ndarray]:
    """The units as one stream of ids and segments: `a [SEP]` or `a [SEP] b [SEP]`."""
    sep = tokenizer.token_to_id("[SEP]")
    firsts = tokenizer.encode_batch([u[0] for u in units], add_special_tokens=False)
    seconds_units = [(i, u[1]) for i, u in enumerate(units) if len(u) > 1]
    seconds = dict(
        zip(
            (i for i, _ in seconds_units),
            tokenizer.encode_batch([t for _, t in seconds_units], add_special_tokens=False),
            strict=True,
        )
    )
    ids, segments = [], []
    for i, first in enumerate(firsts):
        ids.append(np.array([*first.ids, sep], np.int32))
        segments.append(np.zeros(len(first.ids) + 1, np.int8))
        if i in seconds:
            ids.append(np.array([*seconds[i].ids, sep], np.int32))
            segments.append(np.ones(len(seconds[i].ids) + 1, np.int8))
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.int8)
    return np.concatenate(ids), np.concatenate(segments)


def pack(ids: np.ndarray, segments: np.ndarray, max_length: int, cls_id: int) -> PackedRows:
    """Cuts a token stream into rows of [CLS] + max_length - 1 tokens (the last row padded)."""
    if max_length < 2:
        raise ValueError(f"max_length {max_length} leaves no room for tokens after [CLS].")
    width = max_length - 1
    num_rows = max(1, -(-len(ids) // width))
    padded = num_rows * width
    body = np.zeros(padded, np.int32)
    body[: len(ids)] = ids
    seg = np.zeros(padded, np.int8)
    seg[: len(ids)] = segments
    valid = np.zeros(padded, np.int8)
    valid[: len(ids)] = 1
    cls = np.full((num_rows, 1), cls_id, np.int32)
    return PackedRows(
        input_ids=np.concatenate([cls, body.reshape(num_rows, width)], axis=1),
        segment_ids=np.concatenate([np.zeros_like(cls, np.int8), seg.reshape(num_rows, width)], 1),
        mask=np.concatenate([np.ones_like(cls, np.int8), valid.reshape(num_rows, width)], 1),
        num_tokens=len(ids),
    )


def log_unigram_prior(rows: PackedRows, vocab_size: int, special_ids: Sequence[int]) -> np.ndarray:
    """Log frequency of every vocabulary entry among the rows' predictable (non-special) tokens,
    add-one smoothed: [vocab_size] float32, the word-frequency predictor of masked tokens."""
    ids = rows.input_ids[rows.mask.astype(bool)]
    ids = ids[~np.isin(ids, np.asarray(list(special_ids), np.int64))]
    counts = np.bincount(ids, minlength=vocab_size)[:vocab_size] + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


class CorpusInput:
    """Training batches of packed rows for this process, and the held-out rows."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        tokenizer: tokenizers.Tokenizer,
        train: PackedRows,
        heldout: PackedRows,
        process_index: int,
        process_count: int,
    ):
        if config.batch_size % process_count:
            raise ConfigError(
                f"config.batch_size={config.batch_size} is not divisible by the "
                f"{process_count} processes."
            )
        self.config, self.tokenizer = config, tokenizer
        self.train, self.heldout = train, heldout
        self.vocab_size = tokenizer.get_vocab_size()
        self.batch_size = config.batch_size // process_count
        self.process_index = process_index
        self.steps_per_epoch = len(train) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"The corpus packs into {len(train)} rows, fewer than one batch of "
                f"{config.batch_size}: lower config.batch_size or add text."
            )
        self._read_options = grain.ReadOptions(
            num_threads=1, prefetch_buffer_size=int(config.data.prefetch)
        )

    def special_token_ids(self) -> dict[str, int]:
        """Ids of the special tokens the vocabulary has."""
        ids = {t: self.tokenizer.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS}
        return {t: i for t, i in ids.items() if i is not None}

    @functools.lru_cache(maxsize=2)  # noqa: B019  (two epochs' plans; the input lives as long)
    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(self.train))

    def train_batch(self, step: int, seed: int) -> dict[str, np.ndarray]:
        """This process's slice of global batch `step` (counted over all epochs)."""
        epoch, step_in_epoch = divmod(int(step), self.steps_per_epoch)
        start = step_in_epoch * self.config.batch_size + self.process_index * self.batch_size
        rows = self._permutation(seed, epoch)[start : start + self.batch_size]
        return {
            "input_ids": self.train.input_ids[rows],
            "segment_ids": self.train.segment_ids[rows].astype(np.int32),
            "mask": self.train.mask[rows].astype(np.int32),
        }

    def train_iterator(self, seed: int) -> grain.DatasetIterator:
        """Endless per-process batches; `get_state()` is the step, so resuming is exact."""
        dataset = grain.MapDataset.range(_ENDLESS).map(
            functools.partial(self.train_batch, seed=seed)
        )
        return iter(dataset.to_iter_dataset(self._read_options))

    def heldout_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        """The held-out rows in batches (the same on every process); the last is filled with
        empty rows (mask 0), which hold no prediction."""
        rows = self.heldout
        batches = []
        for start in range(0, len(rows), batch_size):
            batch = {
                "input_ids": rows.input_ids[start : start + batch_size],
                "segment_ids": rows.segment_ids[start : start + batch_size].astype(np.int32),
                "mask": rows.mask[start : start + batch_size].astype(np.int32),
            }
            missing = batch_size - len(batch["mask"])
            batches.append({k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()})
        return batches


def create_input(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    units: Sequence[Unit],
    *,
    process_index: int,
    process_count: int,
) -> CorpusInput:
    """Packs the corpus and the held-out dev text with `tokenizer`."""
    cls_id = tokenizer.token_to_id("[CLS]")
    max_length = int(config.data.max_length)
    heldout_units = deduplicate(glue_units(config, "validation")) if corpus_tasks(config) else []
    if not heldout_units:  # No GLUE dev text: hold out the last 2% of the corpus instead.
        cut = len(units) - max(1, len(units) // 50)
        units, heldout_units = units[:cut], units[cut:]
    train = pack(*token_stream(tokenizer, units), max_length, cls_id)
    heldout = pack(*token_stream(tokenizer, heldout_units), max_length, cls_id)
    limit = int(config.data.heldout_rows)
    if limit > 0:
        heldout = dataclasses.replace(
            heldout,
            input_ids=heldout.input_ids[:limit],
            segment_ids=heldout.segment_ids[:limit],
            mask=heldout.mask[:limit],
        )
    logging.info(
        "Pretraining corpus: %d units, %d tokens in %d rows of %d; held-out %d rows.",
        len(units),
        train.num_tokens,
        len(train),
        max_length,
        len(heldout),
    )
    return CorpusInput(config, tokenizer, train, heldout, process_index, process_count)
