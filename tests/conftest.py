"""Shared fixtures: tiny nets and tiny synthetic data, so every test runs in seconds."""

import os
import sys

import pytest
from tiny_systems import TINY_TEACHER

os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture
def cli_argv(monkeypatch):
    """LightningCLI also parses ``sys.argv``: give it the command's, not pytest's."""
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])


@pytest.fixture
def tiny_teacher_kwargs():
    return dict(TINY_TEACHER)


@pytest.fixture
def tiny_data_kwargs():
    return dict(dataset="synthetic", height=32, batch_size=4, augment=False,
                synthetic_size={"train": 16, "val": 8, "test": 8},
                reader_options={"max_words": 2})
