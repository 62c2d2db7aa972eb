"""The TFDS GLUE builder against the real files in ../shared/data/glue."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums as tfds_checksums

from beex_jax.data import glue_builder

# Row counts of ../shared/data/glue/README.md; None marks a file that is not there.
README_ROWS = {
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "wnli": {"train": 635, "validation": 71, "test": 146},
    "qnli": {"train": None, "validation": 5463, "test": 5463},
    "qqp": {"train": None, "validation": None, "test": None},
    "mnli": {
        "train": None,
        "validation_matched": None,
        "validation_mismatched": None,
        "test_matched": None,
        "test_mismatched": None,
    },
    "ax": {"test": 1104},
}
ARCHIVE_TASKS = ("cola", "rte", "stsb", "wnli")  # Their GLUE archives are in glue/_archives.


def test_tasks_and_splits_match_tfds_glue():
    """Features, label names and split files are those of TFDS's own glue/<task>."""
    from tensorflow_datasets.text import glue as tfds_glue

    assert set(glue_builder.TASKS) == set(README_ROWS)
    for task in glue_builder.TASKS:
        ours = glue_builder.BeexGlue(config=task, data_dir="/nonexistent").info.features
        theirs = tfds_glue.Glue(config=task, data_dir="/nonexistent").info.features
        assert ours.to_json() == theirs.to_json(), task
        assert [split for split, _ in glue_builder.SPECS[task].files] == list(README_ROWS[task])


def test_checksums_are_tfds_published_ones():
    """Same URLs, sizes and sha256 as TFDS's checksums for its glue builder."""
    tfds_file = pathlib.Path(tfds.__file__).parent / "url_checksums" / "glue.txt"
    assert glue_builder.registered_url_infos() == tfds_checksums.load_url_infos(tfds_file)


@pytest.mark.parametrize("task", list(README_ROWS))
def test_row_counts_equal_readme(task, glue_dir, tfds_dir):
    """Every split built from the GLUE folder has the README's row count."""
    missing = [split for split, rows in README_ROWS[task].items() if rows is None]
    if len(missing) == len(README_ROWS[task]):
        pytest.skip(f"{task}: no files in {glue_dir} (see its README: not obtainable).")
    if missing:
        # A partial task fails to build at once, naming the missing file; the files that are
        # there are counted through the builder's own parser.
        with pytest.raises(FileNotFoundError, match=r"train\.tsv"):
            glue_builder.prepare(task, str(tfds_dir), glue_dir=str(glue_dir))
        spec = glue_builder.SPECS[task]
        for split, name in spec.files:
            if README_ROWS[task][split] is None:
                continue
            path = glue_dir / spec.folder / name
            with glue_builder.open_source(str(path)) as f:
                rows = sum(1 for _ in glue_builder.read_rows(task, split, f, str(path)))
            assert rows == README_ROWS[task][split], (task, split)
        pytest.skip(f"{task}: {', '.join(missing)} missing from {glue_dir}; counted the rest.")
    builder = glue_builder.prepare(task, str(tfds_dir), glue_dir=str(glue_dir))
    counts = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert counts == README_ROWS[task]


def test_examples_have_tfds_types_and_test_labels_are_minus_one(glue_dir, tfds_dir):
    """Text is str, labels are class ids (float for STS-B), test labels -1, idx 0..N-1."""
    glue_builder.prepare("stsb", str(tfds_dir), glue_dir=str(glue_dir))
    dev = glue_builder.read_split("stsb", str(tfds_dir), "validation")
    assert dev["label"].dtype == np.float32 and 0 <= dev["label"].min() <= dev["label"].max() <= 5
    assert sorted(dev["idx"]) == list(range(1500))
    test = glue_builder.read_split("stsb", str(tfds_dir), "test", limit=5)
    assert (test["label"] == -1).all() and isinstance(test["sentence1"][0], str)
    glue_builder.prepare("rte", str(tfds_dir), glue_dir=str(glue_dir))
    rte = glue_builder.read_split("rte", str(tfds_dir), "train")
    assert set(rte["label"]) == {0, 1}  # "entailment" / "not_entailment" by name.


@pytest.mark.parametrize("task", ARCHIVE_TASKS)
def test_original_archives_give_the_same_data(task, glue_dir, tfds_dir, tmp_path):
    """Checksum-verified archives from manual_dir, read with zipfile, equal the GLUE folder."""
    archive_tfds = tmp_path / "tfds"
    from_zip = glue_builder.prepare(task, str(archive_tfds), manual_dir=str(glue_dir / "_archives"))
    from_dir = glue_builder.prepare(task, str(tfds_dir), glue_dir=str(glue_dir))
    # Same examples, same keys, so TFDS writes the very same records in the same order.
    records = sorted(p.name for p in from_dir.data_path.glob("*.array_record-*"))
    assert records == sorted(p.name for p in from_zip.data_path.glob("*.array_record-*"))
    assert len(records) == len(glue_builder.SPECS[task].files)
    for name in records:
        assert (from_zip.data_path / name).read_bytes() == (from_dir.data_path / name).read_bytes()


def _manual_dir_of_links(tmp_path: pathlib.Path, links: dict[str, pathlib.Path]) -> pathlib.Path:
    """A manual_dir holding symlinks named as TFDS names the downloads."""
    manual = tmp_path / "manual"
    manual.mkdir()
    for name, target in links.items():
        (manual / name).symlink_to(target)
    return manual


def test_mrpc_from_original_sources_matches_glue_files(glue_dir, tfds_dir, tmp_path):
    """MRPC built by TFDS's rule from the SentEval files has the rows of GLUE's MRPC tsvs.

    Issue 12.10: and the same `idx` for every example, TFDS's numbering, from either source.
    """
    mrpc = glue_dir / "MRPC"
    manual = _manual_dir_of_links(
        tmp_path,
        {
            "msr_paraphrase_train.txt": mrpc / "msr_paraphrase_train.txt",
            "msr_paraphrase_test.txt": mrpc / "msr_paraphrase_test.txt",
            "data_mrpc_dev_ids.tsv": mrpc / "mrpc_dev_ids.tsv",
        },
    )
    glue_builder.prepare("mrpc", str(tmp_path / "tfds"), manual_dir=str(manual))
    glue_builder.prepare("mrpc", str(tfds_dir), glue_dir=str(glue_dir))
    for split in ("train", "validation", "test"):
        a = glue_builder.read_split("mrpc", str(tmp_path / "tfds"), split)
        b = glue_builder.read_split("mrpc", str(tfds_dir), split)
        rows = [
            sorted(
                zip(
                    c["idx"].tolist(),
                    c["sentence1"],
                    c["sentence2"],
                    c["label"].tolist(),
                    strict=True,
                )
            )
            for c in (a, b)
        ]
        assert rows[0] == rows[1], split
        assert len({idx for idx, *_ in rows[0]}) == len(rows[0])


def test_mrpc_without_sources_numbers_by_row_and_says_so(glue_dir, tmp_path, caplog):
    """A GLUE folder without msr_paraphrase_train.txt cannot number as TFDS does: a warning."""
    folder = tmp_path / "glue" / "MRPC"
    folder.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (folder / name).symlink_to(glue_dir / "MRPC" / name)
    glue_builder.prepare("mrpc", str(tmp_path / "tfds"), glue_dir=str(tmp_path / "glue"))
    assert "msr_paraphrase_train.txt is missing" in caplog.text
    dev = glue_builder.read_split("mrpc", str(tmp_path / "tfds"), "validation")
    assert sorted(dev["idx"].tolist()) == list(range(408))


def test_ax_download_path(glue_dir, tmp_path):
    """AX is one plain .tsv download, checksum-verified."""
    manual = _manual_dir_of_links(
        tmp_path, {"tsvsWithoutLabels_AX.tsv": glue_dir / "diagnostic" / "diagnostic.tsv"}
    )
    builder = glue_builder.prepare("ax", str(tmp_path / "tfds"), manual_dir=str(manual))
    assert builder.info.splits["test"].num_examples == 1104


def test_corrupt_archive_fails_checksum(glue_dir, tmp_path):
    """A manual archive that is not byte-identical to the published one is refused."""
    manual = tmp_path / "manual"
    manual.mkdir()
    content = (glue_dir / "_archives" / "WNLI.zip").read_bytes()
    (manual / "WNLI.zip").write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    with pytest.raises(Exception, match="wrong checksum"):
        glue_builder.prepare("wnli", str(tmp_path / "tfds"), manual_dir=str(manual))


def test_preparing_writes_nothing_outside_tfds_dir(glue_dir, tmp_path):
    """Neither site-packages nor the package folder gets a file (e.g. a checksums.tsv)."""
    watched = [pathlib.Path(tfds.__file__).parent, pathlib.Path(glue_builder.__file__).parent]

    def snapshot():
        return {
            (root, name, os.stat(os.path.join(root, name)).st_mtime_ns)
            for folder in watched
            for root, _, names in os.walk(folder)
            for name in names
            if not name.endswith(".pyc")
        }

    before = snapshot()
    glue_builder.prepare("wnli", str(tmp_path / "tfds"), manual_dir=str(glue_dir / "_archives"))
    assert snapshot() == before


def test_missing_folder_names_task_path_and_files(tmp_path):
    """No network, no retries: the error names the task, the path and what was expected."""
    with pytest.raises(FileNotFoundError) as e:
        glue_builder.prepare("rte", str(tmp_path / "tfds"), glue_dir=str(tmp_path / "nowhere"))
    message = str(e.value)
    assert "'rte'" in message and str(tmp_path / "nowhere" / "RTE") in message
    assert "train.tsv, dev.tsv, test.tsv" in message


def test_missing_archive_names_manual_dir(tmp_path):
    """manual_dir without the archive fails at once instead of downloading."""
    with pytest.raises(FileNotFoundError, match=r"'sst2'.*SST-2\.zip"):
        glue_builder.prepare("sst2", str(tmp_path / "tfds"), manual_dir=str(tmp_path))


def test_malformed_row_names_file_and_line(glue_dir, tmp_path):
    """A row with a missing field fails with its file and line number."""
    folder = tmp_path / "glue" / "WNLI"
    folder.mkdir(parents=True)
    for name in ("dev.tsv", "test.tsv"):
        (folder / name).write_bytes((glue_dir / "WNLI" / name).read_bytes())
    lines = (glue_dir / "WNLI" / "train.tsv").read_text().splitlines(keepends=True)
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\n"  # Drop the label of data row 3 (line 4).
    (folder / "train.tsv").write_text("".join(lines))
    with pytest.raises(glue_builder.GlueFormatError, match=r"WNLI/train\.tsv, line 4: expected 4"):
        glue_builder.prepare("wnli", str(tmp_path / "tfds"), glue_dir=str(tmp_path / "glue"))


def test_invalid_utf8_names_file_and_line(glue_dir, tmp_path):
    """Issue 12.4: a byte that is not UTF-8 fails with the file and line, as a bad row does."""
    folder = tmp_path / "glue" / "WNLI"
    folder.mkdir(parents=True)
    for name in ("dev.tsv", "test.tsv"):
        (folder / name).symlink_to(glue_dir / "WNLI" / name)
    lines = (glue_dir / "WNLI" / "train.tsv").read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b" ", b" \xff\xfe ", 1)  # Line 5.
    (folder / "train.tsv").write_bytes(b"".join(lines))
    with pytest.raises(
        glue_builder.GlueFormatError, match=r"WNLI/train\.tsv, line 5: not valid UTF-8"
    ):
        glue_builder.prepare("wnli", str(tmp_path / "tfds"), glue_dir=str(tmp_path / "glue"))


def test_bad_label_names_file_and_line(tmp_path):
    """A label that is neither a class name nor a class index is reported with its line."""
    import io

    f = io.StringIO("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(glue_builder.GlueFormatError, match=r"x\.tsv, line 2: bad label 'maybe'"):
        list(glue_builder.read_rows("rte", "train", f, "x.tsv"))


def test_unknown_task_lists_valid_ones(tmp_path):
    """An unknown task name lists every valid one."""
    with pytest.raises(ValueError, match="valid tasks: sst2, cola, mrpc, rte, stsb, wnli"):
        glue_builder.prepare("sst5", str(tmp_path))


def test_no_local_files_and_no_network_is_one_clear_error(tmp_path, monkeypatch):
    """Issue 12.3: no glue_dir, no manual_dir, no network: at once, what failed and what to do."""
    monkeypatch.setattr(
        glue_builder, "probe_download", lambda url: "cannot reach example.org: simulated"
    )
    with pytest.raises(glue_builder.GlueNotFoundError) as e:
        glue_builder.prepare("rte", str(tmp_path / "tfds"))
    message = str(e.value)
    assert "no local files" in message and "cannot reach example.org: simulated" in message
    assert "--config.data.glue_dir" in message and "RTE/train.tsv, dev.tsv, test.tsv" in message
    assert "--config.data.manual_dir" in message and "RTE.zip" in message
    assert "\n" not in message


def test_failed_download_after_a_good_probe_is_the_same_error(tmp_path, monkeypatch):
    """A download that fails after the probe (e.g. a proxy refusing) says the same thing."""
    import requests

    def refuse(self, **kwargs):
        raise requests.ConnectionError("Max retries exceeded (simulated)")

    monkeypatch.setattr(glue_builder, "probe_download", lambda url: "")
    monkeypatch.setattr(glue_builder.BeexGlue, "download_and_prepare", refuse)
    with pytest.raises(glue_builder.GlueNotFoundError, match=r"ConnectionError: Max retries.*"):
        glue_builder.prepare("wnli", str(tmp_path / "tfds"))


def test_probe_of_an_unreachable_host_is_quick():
    """The probe tries once: a refused port answers in well under a second."""
    import socket
    import time

    with socket.socket() as s:  # A port nobody listens on: bound, never listening.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        start = time.monotonic()
        reason = glue_builder.probe_download(f"http://127.0.0.1:{port}/GLUE.zip", timeout=5)
    assert reason.startswith("cannot reach 127.0.0.1") and time.monotonic() - start < 2
