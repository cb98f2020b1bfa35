"""Shared fixtures: tiny nets and tiny synthetic data, so every test runs in seconds."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A tiny teacher: the same class as the real one, a few hundred parameters per layer.
# Height 32 with the fourth pool on height only keeps 4 px of width per frame.
TINY_TEACHER = dict(
    height=32,
    channels=[4, 8, 8, 8, 8],
    pools=[[2, 2], [2, 2], [2, 1], [2, 1], None],
    lstm_hidden=8,
    lstm_layers=1,
    heads=1,
    se_reduction=2,
)


@pytest.fixture
def tiny_teacher_kwargs():
    return dict(TINY_TEACHER)


@pytest.fixture
def tiny_data_kwargs():
    return dict(dataset="synthetic", height=32, batch_size=4, augment=False,
                synthetic_size={"train": 16, "val": 8, "test": 8},
                reader_options={"max_words": 2})
