"""GLUE input pipeline: prepared TFDS data -> tokenized, length-bucketed batches through grain.

A split is read once with `tfds.data_source` and tokenized into memory (GLUE is small). Batching is
a pure function of (seed, step): every process computes the same global plan and takes its own
slice, so every process's batch has the same padded length T, and a grain iterator's state is just
the next step, which is what makes resuming exact.

Training, per epoch: shuffle with (seed, epoch); sort windows of `bucket_window` batches by length
so that each batch holds similar lengths; cut into global batches (dropping the remainder); shuffle
the batch order. T is the smallest of `bucket_boundaries` (capped at `max_length`) that fits the
longest example of the global batch, so jit sees at most len(boundaries) + 1 shapes.

Evaluation: examples sorted by length, cut into full global batches; the last is filled with
padding examples of weight 0 (and idx -1), so every example appears exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tokenizers

from beex_jax.config_fields import ConfigError
from beex_jax.data import glue_builder
from beex_jax.data import tokenizer as tokenizer_lib

TRAIN_TASKS = tuple(task for task in glue_builder.TASKS if task != "ax")
_ENDLESS = 2**62  # Steps of the training dataset: it repeats epochs forever.


def eval_split_names(task: str) -> tuple[str, ...]:
    """The dev splits of `task`: ("validation",), or MNLI's matched and mismatched ones."""
    glue_builder.task_spec(task)
    if task == "mnli":
        return ("validation_matched", "validation_mismatched")
    return ("validation",) if task != "ax" else ()


def padded_lengths(boundaries: tuple[int, ...], max_length: int) -> np.ndarray:
    """The allowed padded lengths: boundaries below max_length, then max_length itself."""
    return np.array(sorted({int(b) for b in boundaries if 0 < b < max_length} | {max_length}))


def bucket_length(longest: int, allowed: np.ndarray) -> int:
    """The smallest allowed padded length that holds `longest` tokens."""
    return int(allowed[np.searchsorted(allowed, longest)])


def epoch_plan(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, window: int
) -> np.ndarray:
    """Example indices [steps, batch_size] of one training epoch (global batches).

    A seeded permutation, cut to whole batches, sorted by length inside windows of `window`
    batches, then batches in a seeded random order.
    """
    rng = np.random.default_rng([seed, epoch])
    steps = len(lengths) // batch_size
    order = rng.permutation(len(lengths))[: steps * batch_size]
    chunk = max(1, window) * batch_size
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        order[start : start + chunk] = part[np.argsort(lengths[part], kind="stable")]
    return order.reshape(steps, batch_size)[rng.permutation(steps)]


def eval_plan(lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """Example indices [batches, batch_size], by length; -1 marks the padding of the last batch."""
    num_batches = max(1, math.ceil(len(lengths) / batch_size))
    order = np.full(num_batches * batch_size, -1, np.int64)
    order[: len(lengths)] = np.argsort(lengths, kind="stable")
    return order.reshape(num_batches, batch_size)


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """One split, tokenized and padded to max_length, in memory."""

    input_ids: np.ndarray  # [N, max_length], uint16 when the vocabulary fits.
    segment_ids: np.ndarray  # [N, max_length] int8.
    length: np.ndarray  # [N] int32, tokens before padding.
    label: np.ndarray  # [N] int32 (float32 for STS-B); -1 on test.
    idx: np.ndarray  # [N] int32, TFDS `idx` of the example.

    def __len__(self) -> int:
        return len(self.length)


def encode_split(
    tokenizer: tokenizers.Tokenizer, task: str, columns: dict[str, Any], max_length: int, name: str
) -> EncodedSplit:
    """Tokenizes the columns returned by `glue_builder.read_split`."""
    fields = tokenizer_lib.text_fields(task)
    texts_b = columns[fields[1]] if len(fields) > 1 else None
    encoded = tokenizer_lib.encode(
        tokenizer, columns[fields[0]], texts_b, max_length=max_length, log_truncation=False
    )
    n_truncated = int(encoded["truncated"].sum())
    if n_truncated:
        logging.info(
            "%s %s: truncated %d of %d examples longer than max_length=%d tokens.",
            task,
            name,
            n_truncated,
            len(encoded["length"]),
            max_length,
        )
    id_dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.int32
    return EncodedSplit(
        input_ids=encoded["input_ids"].astype(id_dtype),
        segment_ids=encoded["segment_ids"].astype(np.int8),
        length=encoded["length"],
        label=columns["label"],
        idx=columns["idx"],
    )


class GlueInput:
    """Training and evaluation batches of one GLUE task for this process."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        tokenizer: tokenizers.Tokenizer,
        train: EncodedSplit,
        process_index: int,
        process_count: int,
    ):
        self.config = config
        self.task = config.task
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.max_length = int(config.data.max_length)
        self.process_index, self.process_count = process_index, process_count
        for name in ("batch_size", "eval_batch_size"):
            if config[name] % process_count:
                raise ConfigError(
                    f"config.{name}={config[name]} is not divisible by the "
                    f"{process_count} processes."
                )
        self.batch_size = config.batch_size // process_count  # Per process.
        self.eval_batch_size = config.eval_batch_size // process_count  # Per process.
        self.allowed_lengths = padded_lengths(tuple(config.data.bucket_boundaries), self.max_length)
        self._train = train
        self.num_train_examples = len(train)
        self.steps_per_epoch = len(train) // config.batch_size  # Global batches per epoch.
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{self.task}: {len(train)} train examples do not fill one batch of "
                f"{config.batch_size}: lower config.batch_size."
            )
        self._eval: dict[str, EncodedSplit] = {}
        self._eval_plans: dict[str, np.ndarray] = {}
        self._plans: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self._read_options = grain.ReadOptions(
            num_threads=1, prefetch_buffer_size=int(config.data.get("prefetch", 4))
        )
        empty = tokenizer_lib.encode(tokenizer, [""], max_length=self.max_length)
        self._empty_ids = empty["input_ids"][0]  # [CLS] [SEP]: the padding examples' input.

    def special_token_ids(self) -> dict[str, int]:
        """Ids of [PAD], [UNK], [CLS], [SEP] (and [MASK] when the vocabulary has it)."""
        ids = {token: self.tokenizer.token_to_id(token) for token in tokenizer_lib.SPECIAL_TOKENS}
        return {token: i for token, i in ids.items() if i is not None}

    # ---- training ---------------------------------------------------------------------------
    def _epoch_plan(self, seed: int, epoch: int) -> np.ndarray:
        """The plan of one epoch, computed once (the last two are kept)."""
        with self._lock:
            if (seed, epoch) not in self._plans:
                self._plans[seed, epoch] = epoch_plan(
                    self._train.length,
                    self.config.batch_size,
                    seed,
                    epoch,
                    int(self.config.data.get("bucket_window", 64)),
                )
                while len(self._plans) > 2:
                    self._plans.pop(next(iter(self._plans)))
            return self._plans[seed, epoch]

    def train_batch(self, step: int, seed: int) -> dict[str, np.ndarray]:
        """This process's slice of global training batch `step` (counted over all epochs)."""
        epoch, step_in_epoch = divmod(int(step), self.steps_per_epoch)
        global_indices = self._epoch_plan(seed, epoch)[step_in_epoch]
        length = bucket_length(int(self._train.length[global_indices].max()), self.allowed_lengths)
        start = self.process_index * self.batch_size
        return self._gather(self._train, global_indices[start : start + self.batch_size], length)

    def train_iterator(self, seed: int | None = None) -> grain.DatasetIterator:
        """Endless per-process training batches; `get_state()` is JSON-serializable and exact."""
        seed = self.config.seed if seed is None else seed
        dataset = grain.MapDataset.range(_ENDLESS).map(
            functools.partial(self.train_batch, seed=seed)
        )
        return iter(dataset.to_iter_dataset(self._read_options))

    # ---- evaluation -------------------------------------------------------------------------
    def eval_split(self, split: str) -> EncodedSplit:
        """Reads and tokenizes `split` once (its first `max_eval_examples` if set)."""
        if split not in self._eval:
            columns = glue_builder.read_split(
                self.task, self.config.data.tfds_dir, split, int(self.config.data.max_eval_examples)
            )
            data = encode_split(self.tokenizer, self.task, columns, self.max_length, split)
            self._eval_plans[split] = eval_plan(data.length, self.config.eval_batch_size)
            self._eval[split] = data
        return self._eval[split]

    def num_eval_batches(self, split: str) -> int:
        """Batches `eval_batches(split)` yields (the same on every process)."""
        self.eval_split(split)
        return len(self._eval_plans[split])

    def eval_batch(self, split: str, batch_index: int) -> dict[str, np.ndarray]:
        """This process's slice of global evaluation batch `batch_index`."""
        data = self.eval_split(split)
        global_indices = self._eval_plans[split][batch_index]
        real = global_indices[global_indices >= 0]
        longest = int(data.length[real].max()) if len(real) else 2
        start = self.process_index * self.eval_batch_size
        return self._gather(
            data,
            global_indices[start : start + self.eval_batch_size],
            bucket_length(longest, self.allowed_lengths),
        )

    def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Every example of `split` exactly once; the last batch is padded with weight 0."""
        self.eval_split(split)
        dataset = grain.MapDataset.range(self.num_eval_batches(split)).map(
            functools.partial(self.eval_batch, split)
        )
        yield from dataset.to_iter_dataset(self._read_options)

    # ---- batch assembly ---------------------------------------------------------------------
    def _gather(
        self, data: EncodedSplit, indices: np.ndarray, length: int
    ) -> dict[str, np.ndarray]:
        """Batch of `indices` (-1: a padding example of weight 0) padded to `length` tokens."""
        real = indices >= 0
        safe = np.where(real, indices, 0)
        input_ids = data.input_ids[safe, :length].astype(np.int32)
        input_ids[~real] = self._empty_ids[:length]
        segment_ids = np.where(real[:, None], data.segment_ids[safe, :length], 0).astype(np.int32)
        token_count = np.where(real, data.length[safe], 2)
        mask = (np.arange(length)[None, :] < token_count[:, None]).astype(np.int32)
        label = np.where(real, data.label[safe], 0).astype(data.label.dtype)
        return {
            "input_ids": input_ids,
            "segment_ids": segment_ids,
            "mask": mask,
            "label": label,
            "weight": real.astype(np.float32),
            "idx": np.where(real, data.idx[safe], -1).astype(np.int32),
        }


def create_input(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> GlueInput:
    """Prepares the task (if needed), builds the tokenizer and tokenizes the train split."""
    if config.task not in TRAIN_TASKS:
        raise ValueError(
            f"Unknown or test-only GLUE task {config.task!r}; valid tasks: "
            f"{', '.join(TRAIN_TASKS)}."
        )
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    data = config.data
    glue_builder.prepare(
        config.task, data.tfds_dir, glue_dir=data.glue_dir, manual_dir=data.manual_dir
    )
    learn = not data.vocab_file and not os.path.exists(tokenizer_lib.learned_vocab_path(config))
    # Learning a vocabulary reads the whole train split anyway: read it once.
    columns = glue_builder.read_split(
        config.task, data.tfds_dir, "train", -1 if learn else int(data.max_train_examples)
    )
    fields = tokenizer_lib.text_fields(config.task)
    tokenizer = tokenizer_lib.build_tokenizer(
        config, [text for field in fields for text in columns[field]] if learn else None
    )
    if learn and data.max_train_examples > 0:
        columns = {key: value[: data.max_train_examples] for key, value in columns.items()}
    train = encode_split(tokenizer, config.task, columns, int(data.max_length), "train")
    return GlueInput(config, tokenizer, train, process_index, process_count)
