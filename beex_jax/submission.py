"""GLUE leaderboard files: a model's test-set predictions as gluebenchmark.com takes them.

  python -m beex_jax.main --mode=predict --workdir W --split=test --glue_submission DIR

writes DIR/<file> for the model's task: a header `index<TAB>prediction`, then one row per test
example in the test file's order, `index` being the example's id (TFDS `idx`, the row number of
the GLUE test file). Predictions are what the server expects per task: 0/1 for CoLA, SST-2, MRPC,
QQP and WNLI; label names for MNLI, QNLI, RTE and AX; for STS-B the score clipped to [0, 5].
An MNLI model writes MNLI-m.tsv, MNLI-mm.tsv and also AX.tsv (the diagnostic set). Zip the
files of all tasks together to submit.

The test data comes from the run's data config (`data.glue_dir` / `manual_dir` / `tfds_dir`),
prepared like the training data.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from beex_jax.data import glue_builder

if TYPE_CHECKING:
    from beex_jax.predict import Predictor

# (task whose examples are predicted, its split, the file the GLUE server expects).
FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "cola": (("cola", "test", "CoLA.tsv"),),
    "sst2": (("sst2", "test", "SST-2.tsv"),),
    "mrpc": (("mrpc", "test", "MRPC.tsv"),),
    "qqp": (("qqp", "test", "QQP.tsv"),),
    "stsb": (("stsb", "test", "STS-B.tsv"),),
    "mnli": (
        ("mnli", "test_matched", "MNLI-m.tsv"),
        ("mnli", "test_mismatched", "MNLI-mm.tsv"),
        ("ax", "test", "AX.tsv"),
    ),
    "qnli": (("qnli", "test", "QNLI.tsv"),),
    "rte": (("rte", "test", "RTE.tsv"),),
    "wnli": (("wnli", "test", "WNLI.tsv"),),
}
# Tasks whose predictions are label names; the other classification tasks take class ids.
NAMED_LABELS = ("mnli", "qnli", "rte", "ax")
STSB_RANGE = (0.0, 5.0)


class SubmissionError(ValueError):
    """A model or split that cannot make GLUE submission files."""


def format_prediction(task: str, record: Mapping[str, Any], label_names: tuple[str, ...]) -> str:
    """One `prediction` cell: a class id, a label name, or an STS-B score clipped to 0..5."""
    if "score" in record:
        low, high = STSB_RANGE
        return f"{min(max(float(record['score']), low), high):.6g}"
    label = int(record["label"])
    return label_names[label] if task in NAMED_LABELS else str(label)


def _write_atomically(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".glue-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_submission(
    predictor: Predictor,
    directory: str,
    *,
    tfds_dir: str,
    glue_dir: str | None = None,
    manual_dir: str | None = None,
    split: str = "test",
) -> dict[str, int]:
    """Writes the GLUE submission files of `predictor`'s task into `directory`; {file: rows}."""
    if split != "test":
        raise SubmissionError("--glue_submission writes test predictions: use --split=test.")
    if predictor.task not in FILES:
        raise SubmissionError(f"No GLUE submission file for task {predictor.task!r}.")
    os.makedirs(directory, exist_ok=True)
    written = {}
    for task, task_split, name in FILES[predictor.task]:
        glue_builder.prepare(task, tfds_dir, glue_dir=glue_dir, manual_dir=manual_dir)
        columns = glue_builder.read_split(task, tfds_dir, task_split)
        fields = [feature for feature, _ in glue_builder.task_spec(task).text_features]
        examples = list(zip(*(columns[f] for f in fields), strict=True))
        records = predictor.predict(examples)
        rows = sorted(zip(columns["idx"].tolist(), records, strict=True), key=lambda r: r[0])
        lines = ["index\tprediction\n"]
        lines += [
            f"{idx}\t{format_prediction(task, record, predictor.label_names)}\n"
            for idx, record in rows
        ]
        _write_atomically(os.path.join(directory, name), "".join(lines))
        written[name] = len(rows)
        logging.info("Wrote %d %s %s predictions to %s.", len(rows), task, task_split, name)
    return written
