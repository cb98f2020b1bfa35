"""Fixtures of the TrOCR tests (builders in ``trocr_helpers``)."""

from types import SimpleNamespace

import pytest
import torch
from trocr_helpers import IMAGE_SIZE, make_tiny_trocr, pretrain, write_lines

from htr_lightning.data.synthetic import SYNTHETIC_CHARSET


@pytest.fixture
def one_thread():
    """Runs a test with one intra-op thread.

    Tensors of a 32-wide model are too small for intra-op threads to help, and on a shared
    2-core machine two threads per op measured 10x slower than one (pretraining the tiny model:
    76 s against 7 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_trocr_dir(tmp_path):
    """A randomly initialised tiny TrOCR saved with ``save_pretrained``."""
    return make_tiny_trocr.save_tiny_trocr(tmp_path / "tiny_trocr", SYNTHETIC_CHARSET, IMAGE_SIZE)


@pytest.fixture(scope="session")
def pretrained_trocr(tmp_path_factory):
    """Six line files and a tiny TrOCR trained to read them exactly (shared: do not modify)."""
    root = tmp_path_factory.mktemp("trocr_lines")
    texts = write_lines(root)
    directory = make_tiny_trocr.save_tiny_trocr(root / "pretrained", SYNTHETIC_CHARSET, IMAGE_SIZE)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        steps = pretrain(directory, root)
    finally:
        torch.set_num_threads(before)
    return SimpleNamespace(dir=directory, root=root, texts=texts, steps=steps)
