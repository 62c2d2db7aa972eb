"""Shared pytest fixtures: where the real GLUE files are, and a per-session TFDS folder."""

from __future__ import annotations

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def glue_dir() -> pathlib.Path:
    """The real GLUE folder (../shared/data/glue); skips when this checkout has none."""
    path = SHARED_DATA / "glue"
    if not path.is_dir():
        pytest.skip(f"No GLUE folder at {path}.")
    return path


@pytest.fixture(scope="session")
def bert_vocab_file() -> pathlib.Path:
    """BERT's uncased WordPiece vocabulary (../shared/data/vocab)."""
    path = SHARED_DATA / "vocab" / "bert-base-uncased-vocab.txt"
    if not path.is_file():
        pytest.skip(f"No BERT vocabulary at {path}.")
    return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One TFDS data folder for the whole session, so that each task is prepared once."""
    return tmp_path_factory.mktemp("tensorflow_datasets")
