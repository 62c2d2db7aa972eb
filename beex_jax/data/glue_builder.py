"""TFDS builder for GLUE, with the features, labels and splits of TFDS's own `glue/<task>`.

Two sources, one set of parsers:
  * `glue_dir`: a folder in the standard GLUE layout (`SST-2/train.tsv`, `MNLI/dev_matched.tsv`,
    `diagnostic/diagnostic.tsv`, ...), read as is (MRPC's train/dev `idx` follow the rows of
    `MRPC/msr_paraphrase_train.txt` when the folder has it, as TFDS numbers them);
  * otherwise the original GLUE archives, fetched by TFDS's download manager from the URLs and
    with the published checksums of TFDS's `glue` builder (or taken from `manual_dir`, where TFDS
    verifies the same checksums), and read with `zipfile`: no TensorFlow anywhere.

The builder is named `beex_glue` so that its prepared data never mixes with TFDS's `glue`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import logging
import os
import socket
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums as tfds_checksums

BUILDER_NAME = "beex_glue"
TASKS = ("sst2", "cola", "mrpc", "rte", "stsb", "wnli", "qnli", "qqp", "mnli", "ax")
_TRAIN_DEV_TEST = (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))
_NLI = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
# CoLA's train/dev files have no header line; these are their columns.
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")
_GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
_SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
_MRPC_DEV_IDS_URL = (
    "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
    "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc"
)
# url -> (bytes, sha256, file name): the published files, exactly as TFDS's glue checksums list.
_URLS = {
    "https://bit.ly/2BOtOJ7": (
        222257,
        "0e13510b1bb14436ff7e2ee82338f0efb0133ecf2e73507a697dc210db3f05fd",
        "tsvsWithoutLabels_AX.tsv",
    ),
    _GLUE_URL + "CoLA.zip": (
        376971,
        "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff",
        "CoLA.zip",
    ),
    _GLUE_URL + "MNLI.zip": (
        312783507,
        "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633",
        "MNLI.zip",
    ),
    _GLUE_URL + "QNLIv2.zip": (
        10627589,
        "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5",
        "QNLIv2.zip",
    ),
    _GLUE_URL + "QQP.zip": (
        41696084,
        "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0",
        "QQP.zip",
    ),
    _GLUE_URL + "RTE.zip": (
        697150,
        "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee",
        "RTE.zip",
    ),
    _GLUE_URL + "SST-2.zip": (
        7439277,
        "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa",
        "SST-2.zip",
    ),
    _GLUE_URL + "STS-B.zip": (
        802872,
        "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85",
        "STS-B.zip",
    ),
    _GLUE_URL + "WNLI.zip": (
        28999,
        "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46",
        "WNLI.zip",
    ),
    _SENTEVAL_URL + "msr_paraphrase_test.txt": (
        441275,
        "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784",
        "msr_paraphrase_test.txt",
    ),
    _SENTEVAL_URL + "msr_paraphrase_train.txt": (
        1047044,
        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
        "msr_paraphrase_train.txt",
    ),
    _MRPC_DEV_IDS_URL: (
        6222,
        "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7",
        "data_mrpc_dev_ids.tsv",
    ),
}
_MRPC_URLS = {
    "train": _SENTEVAL_URL + "msr_paraphrase_train.txt",
    "test": _SENTEVAL_URL + "msr_paraphrase_test.txt",
    "dev_ids": _MRPC_DEV_IDS_URL,
}


class GlueFormatError(ValueError):
    """A GLUE file has a row that cannot be parsed."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is laid out on disk and what TFDS features it has."""

    folder: str  # Folder in the GLUE layout (and top folder of its archive).
    text_features: tuple[tuple[str, str], ...]  # (feature name, column header) pairs.
    label_column: str  # Header of the label column ("" when there is none).
    label_classes: tuple[str, ...] | None  # Class names; None means a float label (STS-B).
    files: tuple[tuple[str, str], ...] = _TRAIN_DEV_TEST  # (split name, file in folder) pairs.
    archive: str = ""  # File name of the GLUE archive (empty: not one zip).


SPECS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "CoLA",
        (("sentence", "sentence"),),
        "label",
        ("unacceptable", "acceptable"),
        archive="CoLA.zip",
    ),
    "sst2": TaskSpec(
        "SST-2", (("sentence", "sentence"),), "label", ("negative", "positive"), archive="SST-2.zip"
    ),
    "mrpc": TaskSpec(
        "MRPC",
        (("sentence1", "#1 String"), ("sentence2", "#2 String")),
        "Quality",
        ("not_equivalent", "equivalent"),
    ),
    "qqp": TaskSpec(
        "QQP",
        (("question1", "question1"), ("question2", "question2")),
        "is_duplicate",
        ("not_duplicate", "duplicate"),
        archive="QQP.zip",
    ),
    "stsb": TaskSpec(
        "STS-B",
        (("sentence1", "sentence1"), ("sentence2", "sentence2")),
        "score",
        None,
        archive="STS-B.zip",
    ),
    "mnli": TaskSpec(
        "MNLI",
        (("premise", "sentence1"), ("hypothesis", "sentence2")),
        "gold_label",
        _MNLI,
        files=(
            ("train", "train.tsv"),
            ("validation_matched", "dev_matched.tsv"),
            ("validation_mismatched", "dev_mismatched.tsv"),
            ("test_matched", "test_matched.tsv"),
            ("test_mismatched", "test_mismatched.tsv"),
        ),
        archive="MNLI.zip",
    ),
    "qnli": TaskSpec(
        "QNLI",
        (("question", "question"), ("sentence", "sentence")),
        "label",
        _NLI,
        archive="QNLIv2.zip",
    ),
    "rte": TaskSpec(
        "RTE",
        (("sentence1", "sentence1"), ("sentence2", "sentence2")),
        "label",
        _NLI,
        archive="RTE.zip",
    ),
    "wnli": TaskSpec(
        "WNLI",
        (("sentence1", "sentence1"), ("sentence2", "sentence2")),
        "label",
        ("not_entailment", "entailment"),
        archive="WNLI.zip",
    ),
    "ax": TaskSpec(
        "diagnostic",
        (("premise", "sentence1"), ("hypothesis", "sentence2")),
        "",
        _MNLI,
        files=(("test", "diagnostic.tsv"),),
    ),
}


def task_spec(task: str) -> TaskSpec:
    """Returns the spec of `task`, or raises a ValueError listing the valid tasks."""
    if task not in SPECS:
        raise ValueError(f"Unknown GLUE task {task!r}; valid tasks: {', '.join(TASKS)}.")
    return SPECS[task]


def registered_url_infos() -> dict[str, tfds_checksums.UrlInfo]:
    """The registered size and sha256 of every GLUE download, keyed by URL."""
    return {
        url: tfds_checksums.UrlInfo(size=size, checksum=sha, filename=name)
        for url, (size, sha, name) in _URLS.items()
    }


def task_urls(task: str) -> dict[str, str]:
    """The URLs one task downloads: {"archive": url} or MRPC's three source files."""
    if task == "mrpc":
        return dict(_MRPC_URLS)
    if task == "ax":
        return {"archive": "https://bit.ly/2BOtOJ7"}
    return {"archive": _GLUE_URL + task_spec(task).archive}


def glue_dir_files(task: str, glue_dir: str | os.PathLike) -> dict[str, str]:
    """Split -> file path in a GLUE folder; raises FileNotFoundError naming what is missing."""
    spec = task_spec(task)
    folder = os.path.join(os.path.expanduser(os.fspath(glue_dir)), spec.folder)
    files = {split: os.path.join(folder, name) for split, name in spec.files}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"GLUE task {task!r}: missing {', '.join(missing)}. Expected the files "
            f"{', '.join(name for _, name in spec.files)} in {folder} (standard GLUE layout)."
        )
    return files


MRPC_TRAIN_SOURCE = "msr_paraphrase_train.txt"


def mrpc_ids_source(glue_dir: str | os.PathLike) -> str:
    """MRPC/msr_paraphrase_train.txt of a GLUE folder, which numbers train and dev as TFDS does.

    Without it ("" returned, with a warning) MRPC train/dev `idx` is the row of train.tsv/dev.tsv,
    which differs from TFDS's `glue/mrpc`.
    """
    path = os.path.join(os.path.expanduser(os.fspath(glue_dir)), "MRPC", MRPC_TRAIN_SOURCE)
    if os.path.isfile(path):
        return path
    logging.warning(
        "%s is missing: MRPC train/dev idx are numbered by row of train.tsv/dev.tsv, not by row "
        "of %s as TFDS numbers them.",
        path,
        MRPC_TRAIN_SOURCE,
    )
    return ""


def manual_dir_files(task: str, manual_dir: str | os.PathLike) -> dict[str, str]:
    """Key -> path of the original downloads of `task` in `manual_dir`; raises if any is missing."""
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    infos = registered_url_infos()
    files = {
        key: os.path.join(manual_dir, infos[url].filename) for key, url in task_urls(task).items()
    }
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"GLUE task {task!r}: missing {', '.join(missing)}. Expected the original GLUE "
            f"download(s) {', '.join(os.path.basename(p) for p in files.values())} in "
            f"manual_dir {manual_dir}, or set data.glue_dir to a folder in the GLUE layout."
        )
    return files


def _label(value: str, spec: TaskSpec, where: str) -> Any:
    """Parses one label cell (a class name, a class index or a float score)."""
    try:
        if spec.label_classes is None:
            return np.float32(value)
        if value in spec.label_classes:
            return spec.label_classes.index(value)
        label = int(value)
        if not 0 <= label < len(spec.label_classes):
            raise ValueError(f"class index out of range 0..{len(spec.label_classes) - 1}")
        return label
    except ValueError as e:
        raise GlueFormatError(f"{where}: bad label {value!r} ({e}).") from None


def read_rows(
    task: str,
    split: str,
    f: Iterable[str],
    name: str,
    pair_ids: Mapping[tuple[str, str], int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields TFDS examples from the lines of one GLUE `.tsv`; `name` appears in errors.

    `idx` is the row number, or with `pair_ids` (MRPC) the number of the row's (#1 ID, #2 ID).
    """
    spec = task_spec(task)
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    if task == "cola" and split != "test":
        header = list(_COLA_COLUMNS)
    else:
        header = next(reader, None)
        if header is None:
            raise GlueFormatError(f"{name}: the file is empty (expected a header line).")
    columns = {column: i for i, column in enumerate(header)}
    wanted = [column for _, column in spec.text_features]
    absent = [column for column in wanted if column not in columns]
    if absent:
        raise GlueFormatError(f"{name}, line 1: header {header} lacks the columns {absent}.")
    has_label = bool(spec.label_column) and spec.label_column in columns
    for idx, row in enumerate(reader):
        where = f"{name}, line {reader.line_num}"
        if len(row) != len(header):
            raise GlueFormatError(
                f"{where}: expected {len(header)} tab-separated fields {header}, got {len(row)}."
            )
        example = {feature: row[columns[column]] for feature, column in spec.text_features}
        if has_label:
            example["label"] = _label(row[columns[spec.label_column]], spec, where)
        else:
            example["label"] = np.float32(-1) if spec.label_classes is None else -1
        if pair_ids is not None:
            pair = (row[columns["#1 ID"]], row[columns["#2 ID"]])
            if pair not in pair_ids:
                raise GlueFormatError(f"{where}: the pair {pair} is not in {MRPC_TRAIN_SOURCE}.")
            idx = pair_ids[pair]
        example["idx"] = idx
        yield example


def mrpc_pair_ids(path: str) -> dict[tuple[str, str], int]:
    """(#1 ID, #2 ID) -> row number in msr_paraphrase_train.txt: TFDS's MRPC train/dev idx."""
    with open_source(path) as lines:
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) or []
        if "#1 ID" not in header or "#2 ID" not in header:
            raise GlueFormatError(f"{path}, line 1: header {header} lacks #1 ID and #2 ID.")
        first, second = header.index("#1 ID"), header.index("#2 ID")
        return {(row[first], row[second]): n for n, row in enumerate(reader)}


def read_mrpc_sources(split: str, paths: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Yields MRPC examples from the original SentEval files, split as GLUE and TFDS split them."""
    if split == "test":
        with open_source(paths["test"]) as f:
            for example in read_rows("mrpc", "test", f, paths["test"]):
                yield {**example, "label": -1}
        return
    with open_source(paths["dev_ids"]) as f:
        dev_ids = {tuple(row[:2]) for row in csv.reader(f, delimiter="\t")}
    with open_source(paths["train"]) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        for idx, row in enumerate(reader):
            if len(row) != len(header):
                raise GlueFormatError(
                    f"{paths['train']}, line {reader.line_num}: expected "
                    f"{len(header)} tab-separated fields, got {len(row)}."
                )
            record = dict(zip(header, row, strict=True))
            if ((record["#1 ID"], record["#2 ID"]) in dev_ids) == (split == "validation"):
                yield {
                    "sentence1": record["#1 String"],
                    "sentence2": record["#2 String"],
                    "label": _label(
                        record["Quality"],
                        SPECS["mrpc"],
                        f"{paths['train']}, line {reader.line_num}",
                    ),
                    "idx": idx,
                }


def decode_lines(raw: Iterable[bytes], name: str) -> Iterator[str]:
    """The lines of a binary stream decoded as UTF-8 (BOM dropped); a bad line names its number."""
    for number, line in enumerate(raw, start=1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GlueFormatError(
                f"{name}, line {number}: not valid UTF-8 (byte {e.start}: {e.reason}); GLUE "
                f"files are UTF-8: re-extract or re-download the file."
            ) from None


@contextlib.contextmanager
def open_source(path: str, member: str = "") -> Iterator[Iterator[str]]:
    """The lines of a GLUE text file, or of `member` of a zip archive, decoded as UTF-8."""
    if not member:
        with open(path, "rb") as raw:
            yield decode_lines(raw, path)
        return
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise FileNotFoundError(f"{path} has no member {member}.")
        with archive.open(member) as raw:
            yield decode_lines(raw, f"{path}:{member}")


class BeexGlue(tfds.core.GeneratorBasedBuilder):
    """GLUE from a local GLUE folder or the original archives; same features as TFDS's glue."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "GLUE tasks from a GLUE folder or the original archives.",
        "1.1.0": "MRPC train/dev idx from a GLUE folder numbered as TFDS's glue/mrpc numbers them.",
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=task) for task in TASKS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the original GLUE archives (CoLA.zip, RTE.zip, ...; MRPC: msr_paraphrase_*.txt and "
        "data_mrpc_dev_ids.tsv; AX: tsvsWithoutLabels_AX.tsv) in manual_dir."
    )
    # Shadows TFDS's per-builder checksums file: same URLs and sha256 as TFDS's glue.
    url_infos: ClassVar[dict[str, tfds_checksums.UrlInfo]] = registered_url_infos()

    def __init__(self, *, glue_dir: str | None = None, **kwargs: Any):
        """`glue_dir`: a folder in the GLUE layout; None reads the original archives."""
        super().__init__(**kwargs)
        self._glue_dir = glue_dir
        self._original_state["glue_dir"] = glue_dir  # Keeps the builder picklable.

    @property
    def spec(self) -> TaskSpec:
        """The spec of this builder's task."""
        return SPECS[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        features: dict[str, Any] = {
            name: tfds.features.Text() for name, _ in self.spec.text_features
        }
        classes = self.spec.label_classes
        features["label"] = (
            np.float32 if classes is None else tfds.features.ClassLabel(names=list(classes))
        )
        features["idx"] = np.int32
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), homepage="https://gluebenchmark.com/"
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        task = self.builder_config.name
        if self._glue_dir is not None:
            files = glue_dir_files(task, self._glue_dir)
            ids = mrpc_ids_source(self._glue_dir) if task == "mrpc" else ""
            return {
                split: self._generate_examples(
                    split, path, pair_ids_source=ids if split != "test" else ""
                )
                for split, path in files.items()
            }
        paths = {key: os.fspath(path) for key, path in dl_manager.download(task_urls(task)).items()}
        if task == "mrpc":
            return {
                split: self._generate_examples(split, "", paths)
                for split in ("train", "validation", "test")
            }
        return {
            split: self._generate_examples(
                split,
                paths["archive"],
                member=f"{self.spec.folder}/{name}" if self.spec.archive else "",
            )
            for split, name in self.spec.files
        }

    def _generate_examples(
        self,
        split: str,
        path: str,
        mrpc_paths: dict[str, str] | None = None,
        member: str = "",
        pair_ids_source: str = "",
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        task = self.builder_config.name
        if mrpc_paths is not None:
            for example in read_mrpc_sources(split, mrpc_paths):
                yield example["idx"], example
            return
        name = f"{path}:{member}" if member else path
        pair_ids = mrpc_pair_ids(pair_ids_source) if pair_ids_source else None
        with open_source(path, member) as f:
            for example in read_rows(task, split, f, name, pair_ids):
                yield example["idx"], example


def prepare(
    task: str, tfds_dir: str, *, glue_dir: str | None = None, manual_dir: str | None = None
) -> BeexGlue:
    """Prepares `task` as array_record under `tfds_dir` (once) and returns its builder.

    Checks the sources first, so that a missing folder or archive fails at once with the paths
    it expected instead of falling through to TFDS's network download.
    """
    task_spec(task)
    builder = BeexGlue(
        config=task,
        data_dir=os.path.expanduser(tfds_dir),
        glue_dir=glue_dir,
        file_format="array_record",
    )
    if builder.is_prepared():
        return builder
    if glue_dir is not None:
        glue_dir_files(task, glue_dir)
    elif manual_dir is not None:
        manual_dir_files(task, manual_dir)
    else:  # One quick probe instead of TFDS's minutes of retries when there is no network.
        reason = probe_download(next(iter(task_urls(task).values())))
        if reason:
            raise GlueNotFoundError(no_local_files_message(task, reason))
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir and os.path.expanduser(manual_dir)
            )
        )
    except (OSError, tfds.download.DownloadError) as e:
        if glue_dir is not None or manual_dir is not None or isinstance(e, FileNotFoundError):
            raise
        raise GlueNotFoundError(no_local_files_message(task, f"{type(e).__name__}: {e}")) from e
    return builder


class GlueNotFoundError(FileNotFoundError):
    """Neither local GLUE files nor a working download."""


def probe_download(url: str, timeout: float = 10.0) -> str:
    """'' if the host of `url` accepts a connection, else why not (one try, no retries)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return ""
    except OSError as e:
        return f"cannot reach {parts.hostname}: {e.strerror or e}"


def no_local_files_message(task: str, reason: str) -> str:
    """What to do when a task has no local files and downloading it failed."""
    spec = task_spec(task)
    infos = registered_url_infos()
    downloads = ", ".join(infos[url].filename for url in task_urls(task).values())
    return (
        f"GLUE task {task!r}: no local files (--config.data.glue_dir and "
        f"--config.data.manual_dir are unset) and downloading them failed ({reason}). Point "
        f"--config.data.glue_dir at a folder in the GLUE layout ({spec.folder}/"
        f"{', '.join(name for _, name in spec.files)}) or --config.data.manual_dir at a folder "
        f"holding {downloads}."
    )


def read_split(task: str, tfds_dir: str, split: str, limit: int = -1) -> dict[str, Any]:
    """Reads a prepared split (its first `limit` examples if > 0) with `tfds.data_source`.

    Returns columns: each text feature as a list of str, `label` and `idx` as numpy arrays.
    """
    sources = tfds.data_source(
        f"{BUILDER_NAME}/{task}", data_dir=os.path.expanduser(tfds_dir), download=False
    )
    if split not in sources:
        raise ValueError(f"GLUE task {task!r} has no split {split!r}; it has {sorted(sources)}.")
    source = sources[split]
    n = len(source) if limit <= 0 else min(limit, len(source))
    examples = source.__getitems__(range(n)) if n else []
    spec = task_spec(task)
    columns: dict[str, Any] = {
        name: [example[name].decode("utf-8") for example in examples]
        for name, _ in spec.text_features
    }
    label_dtype = np.float32 if spec.label_classes is None else np.int32
    columns["label"] = np.array([example["label"] for example in examples], dtype=label_dtype)
    columns["idx"] = np.array([example["idx"] for example in examples], dtype=np.int32)
    return columns
