"""Batched, jitted prediction with per-example early exit (SPEC §3): a Python API and file I/O.

  predictor = beex_jax.load("runs/sst2")          # a training workdir (best checkpoint) or an
  predictor.predict(["a gripping film", ...])     # export directory (`beex_jax.export`)
  predictor.predict([("premise", "hypothesis")])  # pairs, for pair tasks

Each prediction is a dict: `label` (class id) and `label_name` with `probabilities` (softmax of
the answering exit), or `score` for STS-B; `exit_index` (0-based exit that answered), `flops`
(FLOPs spent on the example at its real length, `beex_jax.flops`) and `truncated` (the text was
cut to max_length tokens).

Files (`predict_file`, `python -m beex_jax.main --mode=predict --workdir W --input F --output O`):
  .tsv    one or two text columns; a first line naming the task's text columns (e.g. GLUE's
          `sentence<TAB>label`, `index<TAB>sentence1<TAB>sentence2`) is a header and picks them;
  .jsonl  one object a line with the task's field names (`sentence`; `sentence1`/`sentence2`,
          `question`/`sentence`, ...), or `text` / `text_a`, `text_b`;
  other   plain text, one example a line (pairs: the two texts separated by a tab).
The output has one JSON line per input line (a header excepted), in input order, each with the
input's 1-based `line`. Empty lines are predicted as empty texts. A line that is not UTF-8 or not
valid stops the run with `FILE:LINE: reason`, after writing every prediction before it; with
`skip_bad_lines` it is logged and written as `{"line": n, "error": reason}` instead.

Texts are tokenized in chunks, sorted by length and batched; a batch is padded to one of a few
batch sizes (powers of 4 up to batch_size) and bucket lengths (`config.data.bucket_boundaries`),
so jit compiles a handful of programs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tokenizers
import tqdm

from beex_jax import checkpointing, data, early_exit, export
from beex_jax import exits as ex
from beex_jax.data import glue_builder, pipeline
from beex_jax.model import ModelConfig, Params

MODES = ("early_exit", "full_depth")
FORMATS = ("auto", "tsv", "jsonl", "text")
_EXTENSIONS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
_ALIASES = {1: (("text",),), 2: (("sentence1", "sentence2"), ("text_a", "text_b"))}


class BadInputError(ValueError):
    """A line of an input file that cannot be read as an example."""


def batch_sizes(batch_size: int) -> tuple[int, ...]:
    """The padded batch sizes: powers of 4 below batch_size, then batch_size itself."""
    sizes = {batch_size}
    size = 1
    while size < batch_size:
        sizes.add(size)
        size *= 4
    return tuple(sorted(sizes))


class Predictor:
    """A model, its tokenizer and exit rule: jitted batched prediction of texts."""

    def __init__(
        self,
        params: Params,
        config: ml_collections.ConfigDict,
        tokenizer: tokenizers.Tokenizer,
        *,
        mode: str = "early_exit",
        batch_size: int | None = None,
        delta: float | None = None,
        source: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; valid: {MODES}.")
        self.config, self.tokenizer, self.mode = config, tokenizer, mode
        self.source = source  # Where the model was loaded from.
        self.task = config.task
        self.model_config = ModelConfig.from_config(config.model)
        exit_values = dict(config.exit.items())
        if delta is not None:
            exit_values["delta"] = float(delta)
        self.exit_config = ex.ExitConfig.from_config(exit_values)
        if tokenizer.get_vocab_size() != self.model_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {tokenizer.get_vocab_size()} tokens but the "
                f"model's embedding {self.model_config.vocab_size} rows."
            )
        spec = glue_builder.task_spec(self.task)
        self.text_fields = data.text_fields(self.task)
        self.text_columns = tuple(column for _, column in spec.text_features)
        self.label_names = spec.label_classes
        self.max_length = self.model_config.max_length
        self.lengths = pipeline.padded_lengths(
            tuple(config.data.bucket_boundaries), self.max_length
        )
        self.batch_size = int(batch_size or config.eval_batch_size)
        self.batch_sizes = batch_sizes(self.batch_size)
        self.params = jax.device_put(params)
        self._empty = data.encode(tokenizer, [""], max_length=self.max_length)

    @property
    def is_pair(self) -> bool:
        """True when the model reads sentence pairs."""
        return len(self.text_fields) == 2

    def encode(self, texts: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Tokenizes examples (tuples of 1 or 2 texts) padded to max_length; see `data.encode`."""
        texts_a = [t[0] for t in texts]
        texts_b = [t[1] for t in texts] if self.is_pair else None
        return data.encode(
            self.tokenizer, texts_a, texts_b, max_length=self.max_length, log_truncation=False
        )

    def run_batch(
        self, input_ids: np.ndarray, segment_ids: np.ndarray, mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The jitted forward pass (early exit or full depth) on one padded batch."""
        args = (self.params, input_ids, segment_ids, mask, self.exit_config)
        if self.mode == "early_exit":
            out, _ = early_exit.early_exit_forward(*args, model_config=self.model_config)
        else:
            out = early_exit.full_depth_forward(*args, model_config=self.model_config)
        return jax.device_get(out)

    def batches(self, encoded: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, dict]]:
        """(example indices, padded batch) in length order; padding rows are empty texts."""
        order = np.argsort(encoded["length"], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            size = next(s for s in self.batch_sizes if s >= len(rows))
            length = pipeline.bucket_length(int(encoded["length"][rows].max()), self.lengths)
            batch = {}
            for key in ("input_ids", "segment_ids", "mask"):
                padding = np.repeat(self._empty[key], size - len(rows), axis=0)
                batch[key] = np.concatenate([encoded[key][rows], padding])[:, :length]
            yield rows, batch

    def predict_encoded(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-example outputs (logits, prediction, exit_index, last_block, flops), input order."""
        num = len(encoded["length"])
        outputs: dict[str, np.ndarray] = {}
        for rows, batch in self.batches(encoded):
            for key, value in self.run_batch(**batch).items():
                if key not in outputs:
                    outputs[key] = np.zeros((num, *value.shape[1:]), value.dtype)
                outputs[key][rows] = value[: len(rows)]
        return outputs

    def records(
        self, outputs: dict[str, np.ndarray], truncated: np.ndarray
    ) -> list[dict[str, Any]]:
        """One JSON-ready dict per example from `predict_encoded` outputs."""
        logits = outputs["logits"].astype(np.float64)
        out = []
        for i in range(len(logits)):
            if self.label_names is None:  # Regression (STS-B).
                record: dict[str, Any] = {"score": round(float(logits[i, 0]), 6)}
            else:
                p = np.exp(logits[i] - logits[i].max())
                label = int(outputs["prediction"][i])
                record = {
                    "label": label,
                    "label_name": self.label_names[label],
                    "probabilities": [round(float(v), 6) for v in p / p.sum()],
                }
            record.update(
                exit_index=int(outputs["exit_index"][i]),
                flops=int(outputs["flops"][i]),
                truncated=bool(truncated[i]),
            )
            out.append(record)
        return out

    def predict(self, texts: str | Sequence[str | Sequence[str]]) -> list[dict[str, Any]]:
        """Predictions for sentences (a str or a list of them) or pairs (2-tuples)."""
        if isinstance(texts, str) or (
            isinstance(texts, tuple)
            and self.is_pair
            and len(texts) == 2
            and all(isinstance(t, str) for t in texts)
        ):
            texts = [texts]
        examples = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
        for example in examples:
            if len(example) != len(self.text_fields):
                kind = "sentence pairs" if self.is_pair else "single sentences"
                raise ValueError(f"This {self.task} model reads {kind}; got {example!r}.")
        if not examples:
            return []
        encoded = self.encode(examples)
        return self.records(self.predict_encoded(encoded), encoded["truncated"])


def load(
    path: str,
    *,
    mode: str = "early_exit",
    batch_size: int | None = None,
    delta: float | None = None,
    which: str = "best",
) -> Predictor:
    """A Predictor from a training workdir (its `which` checkpoint) or an export directory."""
    path = os.path.expanduser(path)
    if export.is_export(path):
        params, config, tokenizer = export.load_export(path)
    elif os.path.isfile(os.path.join(path, checkpointing.CONFIG_FILE)):
        params, config = checkpointing.restore_params(path, which)
        tokenizer = data.build_tokenizer(config)
    else:
        raise FileNotFoundError(
            f"{path} is neither a training workdir ({checkpointing.CONFIG_FILE} and checkpoints) "
            f"nor an export directory ({export.MANIFEST_FILE})."
        )
    return Predictor(
        params, config, tokenizer, mode=mode, batch_size=batch_size, delta=delta, source=path
    )


# ----------------------------------------------------------------------------- input files
@dataclasses.dataclass(frozen=True)
class Example:
    """The texts of one input line."""

    line: int
    texts: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BadLine:
    """An input line that is not an example, and why."""

    line: int
    reason: str


def _lines(path: str) -> Iterator[tuple[int, str | None, str]]:
    """(1-based line number, decoded line or None, reason) of a file, read as UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark.
            try:
                yield number, raw.decode("utf-8"), ""
            except UnicodeDecodeError as e:
                yield number, None, f"not valid UTF-8 (byte {e.start}: {e.reason})"


def _column_names(predictor: Predictor) -> list[tuple[str, ...]]:
    """Accepted names of each text field: feature name, GLUE column header, generic aliases."""
    names = [[f, c] for f, c in zip(predictor.text_fields, predictor.text_columns, strict=True)]
    for alias in _ALIASES[len(names)]:
        for field_names, name in zip(names, alias, strict=True):
            field_names.append(name)
    return [tuple(dict.fromkeys(n.lower() for n in field_names)) for field_names in names]


def _header_columns(cells: list[str], names: list[tuple[str, ...]]) -> list[int] | None:
    """Column index of each text field if `cells` is a header naming them all, else None."""
    lowered = [cell.strip().lower() for cell in cells]
    found = [next((lowered.index(n) for n in field if n in lowered), None) for field in names]
    return None if None in found else found


def read_examples(
    path: str, predictor: Predictor, input_format: str = "auto"
) -> Iterator[Example | BadLine]:
    """Examples of an input file (TSV, JSONL or plain text), in order; see the module doc."""
    if input_format not in FORMATS:
        raise ValueError(f"Unknown input format {input_format!r}; valid: {FORMATS}.")
    if input_format == "auto":
        input_format = _EXTENSIONS.get(os.path.splitext(path)[1].lower(), "text")
    names = _column_names(predictor)
    width = len(names)
    columns = None  # TSV: column of each text field, from the header.
    for number, line, reason in _lines(path):
        if line is None:
            yield BadLine(number, reason)
        elif not line.strip():
            yield Example(number, ("",) * width)
        elif input_format == "jsonl":
            yield _json_example(number, line, names)
        elif input_format == "text" and width == 1:
            yield Example(number, (line,))
        else:
            cells = line.split("\t")
            if input_format == "tsv" and number == 1:
                columns = _header_columns(cells, names)
                if columns is not None:
                    continue
            if columns is not None:
                if len(cells) <= max(columns):
                    yield BadLine(number, f"{len(cells)} columns, the header has more")
                else:
                    yield Example(number, tuple(cells[c] for c in columns))
            elif len(cells) != width:
                yield BadLine(
                    number,
                    f"{len(cells)} tab-separated columns; a {predictor.task} "
                    f"example has {width} text column(s)",
                )
            else:
                yield Example(number, tuple(cells))


def _json_example(number: int, line: str, names: list[tuple[str, ...]]) -> Example | BadLine:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return BadLine(number, f"malformed JSON ({e.msg} at column {e.colno})")
    if not isinstance(record, dict):
        return BadLine(number, f"a JSON {type(record).__name__}, not an object")
    lowered = {str(k).lower(): v for k, v in record.items()}
    texts = []
    for field in names:
        key = next((n for n in field if n in lowered), None)
        if key is None:
            return BadLine(number, f"no text field: expected one of {list(field)}")
        value = lowered[key]
        if value is not None and not isinstance(value, str):
            return BadLine(number, f"field {key!r} is a {type(value).__name__}, not a string")
        texts.append(value or "")
    return Example(number, tuple(texts))


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def predict_file(
    predictor: Predictor,
    input_path: str,
    output_path: str,
    *,
    input_format: str = "auto",
    skip_bad_lines: bool = False,
    chunk_lines: int = 4096,
) -> dict[str, Any]:
    """Predicts every line of `input_path` into JSON lines at `output_path`; returns a summary.

    Raises BadInputError (after writing every prediction before it) on a bad line, unless
    `skip_bad_lines`.
    """
    start = time.perf_counter()
    total_lines = _count_lines(input_path)
    counts = {"examples": 0, "skipped": 0, "truncated": 0}
    exit_counts = np.zeros(predictor.model_config.num_layers, np.int64)
    flops_sum = 0.0
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with (
        open(output_path, "w", encoding="utf-8") as out,
        tqdm.tqdm(
            total=total_lines,
            unit=" lines",
            desc=f"predict {predictor.task}",
            disable=total_lines < 10 * predictor.batch_size,
            dynamic_ncols=True,
        ) as progress,
    ):
        pending: list[Example | BadLine] = []

        def flush():
            nonlocal flops_sum
            examples = [item for item in pending if isinstance(item, Example)]
            records = iter(predictor.predict([e.texts for e in examples]))
            for item in pending:
                if isinstance(item, Example):
                    record = next(records)
                    counts["truncated"] += record["truncated"]
                    exit_counts[record["exit_index"]] += 1
                    flops_sum += record["flops"]
                    out.write(json.dumps({"line": item.line, **record}) + "\n")
                else:
                    out.write(json.dumps({"line": item.line, "error": item.reason}) + "\n")
            out.flush()
            counts["examples"] += len(examples)
            if pending:
                progress.update(pending[-1].line - progress.n)
            pending.clear()

        for item in read_examples(input_path, predictor, input_format):
            if isinstance(item, BadLine):
                if not skip_bad_lines:
                    flush()
                    raise BadInputError(
                        f"{input_path}:{item.line}: {item.reason} (use "
                        f"--skip_bad_lines to skip such lines)."
                    )
                logging.warning("%s:%d: %s; skipped.", input_path, item.line, item.reason)
                counts["skipped"] += 1
            pending.append(item)
            if len(pending) >= chunk_lines:
                flush()
        flush()
    if counts["truncated"]:
        logging.info(
            "Truncated %d of %d inputs longer than max_length=%d tokens.",
            counts["truncated"],
            counts["examples"],
            predictor.max_length,
        )
    return {
        **counts,
        "mode": predictor.mode,
        "exit_histogram": exit_counts.tolist(),
        "mean_flops": flops_sum / max(counts["examples"], 1),
        "seconds": time.perf_counter() - start,
    }


def predict(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    input_path: str,
    output_path: str,
    input_format: str = "auto",
    skip_bad_lines: bool = False,
    batch_size: int | None = None,
    mode: str = "early_exit",
) -> dict[str, Any]:
    """`--mode=predict`: the model of `workdir` (a training workdir or an export) on a file.

    `config` (the command line's, may be None) must name the same task; its `exit` section then
    replaces the model's saved one, so `--config.exit.delta=0.2` changes the exit rule.
    """
    predictor = load(workdir, mode=mode, batch_size=batch_size)
    if config is not None:
        if config.get("task") != predictor.task:
            raise ValueError(
                f"--config is for task {config.get('task')!r} but {workdir} holds a "
                f"{predictor.task!r} model."
            )
        predictor.exit_config = ex.ExitConfig.from_config(config.exit)
    summary = predict_file(
        predictor, input_path, output_path, input_format=input_format, skip_bad_lines=skip_bad_lines
    )
    logging.info("Wrote %d predictions to %s: %s", summary["examples"], output_path, summary)
    return summary
