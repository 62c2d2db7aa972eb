"""Data fixtures: GLUE configs pointing at the real files, SST-2 prepared once per session."""

from __future__ import annotations

import pytest

from beex_jax import data
from configs import glue


def _make_config(task: str, glue_dir, tfds_dir, **data_overrides):
    """A config for `task` reading the real GLUE folder into the session's TFDS folder."""
    config = glue.get_config(f"task={task}").unlock()
    config.data.glue_dir = str(glue_dir)
    config.data.tfds_dir = str(tfds_dir)
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="session")
def make_config(glue_dir, tfds_dir):
    """`make_config(task, **data_overrides)`: a config on the real files and session TFDS dir."""
    return lambda task, **overrides: _make_config(task, glue_dir, tfds_dir, **overrides)


@pytest.fixture(scope="session")
def sst2_input(make_config, bert_vocab_file) -> data.GlueInput:
    """SST-2 (first 2000 train examples, BERT vocab), batch 32, eval batch 128, one process."""
    config = make_config("sst2", vocab_file=str(bert_vocab_file), max_train_examples=2000)
    return data.create_input(config, process_index=0, process_count=1)


@pytest.fixture(scope="session", autouse=True)
def _quiet_tfds():
    """No TFDS progress bars in test logs."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
