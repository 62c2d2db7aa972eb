"""Prediction over a file: examples read from TSV, JSONL or text lines, predictions written as
JSON lines, bad lines reported with their file and line number.

The model comes in as an argument, anything with the few attributes of `TextPredictor` (in
practice a `beex_jax.predict.Predictor`), so this module imports nothing of the predictor's:
`beex_jax.predict` builds on it, not the other way round.

  .tsv    one or two text columns; a first line naming the task's text columns (e.g. GLUE's
          `sentence<TAB>label`, `index<TAB>sentence1<TAB>sentence2`) is a header and picks them;
  .jsonl  one object a line with the task's field names (`sentence`; `sentence1`/`sentence2`,
          `question`/`sentence`, ...), or `text` / `text_a`, `text_b`;
  other   plain text, one example a line (pairs: the two texts separated by a tab).

The output has one JSON line per input line (a header excepted), in input order, each with the
input's 1-based `line`. Empty lines are predicted as empty texts. A line that is not UTF-8 or not
valid stops the run with `FILE:LINE: reason`, after writing every prediction before it; with
`skip_bad_lines` it is logged and written as `{"line": n, "error": reason}` instead. The output
is written to a temporary file and renamed into place (an interrupted run leaves none behind),
and an output path that is the input file itself is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import tqdm

FORMATS = ("auto", "tsv", "jsonl", "text")
_EXTENSIONS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
# Generic names of the text fields, besides the task's own: single sentences, then pairs.
_ALIASES = {1: (("text",),), 2: (("sentence1", "sentence2"), ("text_a", "text_b"))}


class BadInputError(ValueError):
    """A line of an input file that cannot be read as an example."""


class TextPredictor(Protocol):
    """What predicting a file needs of a model (`beex_jax.predict.Predictor` has it all)."""

    task: str  # The GLUE task, for messages.
    text_fields: tuple[str, ...]  # TFDS feature name of each text field (1 or 2).
    text_columns: tuple[str, ...]  # GLUE's column header of each text field.
    batch_size: int  # Largest batch: the progress bar shows only for files of 10 batches or more.
    max_length: int  # Tokens per example; longer inputs are truncated.
    mode: str  # "early_exit" or "full_depth", reported in the summary.

    @property
    def num_exits(self) -> int:
        """Exit heads (one per block): the length of the exit histogram."""
        ...

    def predict(self, texts: Sequence[tuple[str, ...]]) -> list[dict[str, Any]]:
        """One record per example: `exit_index`, `flops`, `truncated` and the prediction."""
        ...


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


def _column_names(predictor: TextPredictor) -> list[tuple[str, ...]]:
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
    path: str, predictor: TextPredictor, input_format: str = "auto"
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


def check_output_path(input_path: str, output_path: str) -> None:
    """Raises BadInputError if `output_path` is `input_path` (any spelling, links included)."""
    same = os.path.realpath(input_path) == os.path.realpath(output_path)
    if not same and os.path.exists(output_path) and os.path.exists(input_path):
        same = os.path.samefile(input_path, output_path)
    if same:
        raise BadInputError(
            f"--output {output_path} is the input file {input_path}: writing the predictions "
            f"there would destroy it; choose another --output."
        )


def predict_file(
    predictor: TextPredictor,
    input_path: str,
    output_path: str,
    *,
    input_format: str = "auto",
    skip_bad_lines: bool = False,
    chunk_lines: int = 4096,
) -> dict[str, Any]:
    """Predicts every line of `input_path` into JSON lines at `output_path`; returns a summary.

    The output is written to a temporary file beside `output_path` and renamed into place at the
    end, so an interrupted run leaves no half file there. Raises BadInputError on a bad line
    (after renaming the predictions of every line before it into place), unless
    `skip_bad_lines`; and if `output_path` is the input file itself.
    """
    start = time.perf_counter()
    check_output_path(input_path, output_path)
    total_lines = _count_lines(input_path)
    counts = {"examples": 0, "skipped": 0, "truncated": 0}
    exit_counts = np.zeros(predictor.num_exits, np.int64)
    flops_sum = 0.0
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".predict-", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename.
    try:
        with (
            open(fd, "w", encoding="utf-8") as out,
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
    except BadInputError:
        os.replace(partial, output_path)  # The predictions of every line before the bad one.
        raise
    except BaseException:
        os.unlink(partial)
        raise
    os.replace(partial, output_path)
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
