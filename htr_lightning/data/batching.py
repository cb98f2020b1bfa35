"""Dataset over line samples, padding-aware collate and the width-bucketing sampler.

The batch contract (what every model in this package consumes, and what a user's own
DataModule must yield to train our models)::

    {
        "images": float32 (B, 1, H, W_max)  ink = 1, background = 0, zero-padded on the right
        "widths": int64   (B,)              content width of each image in pixels (<= W_max)
        "texts":  list[str] of length B     transcriptions ("" when unknown)
        "ids":    list[str] of length B     line identifiers, for messages and outputs
    }
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from htr_lightning.data.samples import BadSampleError, LineSample
from htr_lightning.data.transforms import LineAugment, LinePreprocessor

log = logging.getLogger("htr_lightning.data")

# Batch widths are rounded up to a multiple of this (see ``collate_lines``); exported models
# record it so their runtime batches lines the same way.
WIDTH_MULTIPLE = 32


class LineDataset(Dataset):
    """Loads and preprocesses line samples on demand.

    A line whose image cannot be read yields None (logged once with its file name); the
    collate function drops it, so one bad file costs one line, not the run.

    Args:
        samples: The lines of one split.
        preprocess: Shared preprocessing (the same object inference uses).
        augment: Training augmentation, or None.
    """

    def __init__(self, samples: Sequence[LineSample], preprocess: LinePreprocessor,
                 augment: LineAugment | None = None) -> None:
        self.samples = samples
        self.preprocess = preprocess
        self.augment = augment
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        try:
            image, width = self.preprocess(sample.load(), self.augment)
        except BadSampleError as err:
            if sample.id not in self._warned:
                self._warned.add(sample.id)
                log.warning("skipping line %s: %s", sample.id, err)
            return None
        return {"image": image, "width": width, "text": sample.text, "id": sample.id}


def collate_lines(items: list[dict | None], pad_to: int = WIDTH_MULTIPLE) -> dict:
    """Pads a list of dataset items into one batch (see the module docstring).

    Items that are None (unreadable lines) are dropped; an all-None batch gives B = 0.

    Args:
        items: Dataset items (``image`` (1, H, W), ``width``, ``text``, ``id``) or None.
        pad_to: The batch width is rounded up to a multiple of this. oneDNN compiles its
            convolution kernels once per input shape (about 1 s each on this CPU), so a few
            distinct widths train much faster than hundreds of exact ones.
    """
    items = [it for it in items if it is not None]
    if not items:
        return {"images": torch.zeros(0, 1, 1, 1), "widths": torch.zeros(0, dtype=torch.long),
                "texts": [], "ids": []}
    height = items[0]["image"].shape[1]
    max_w = max(it["image"].shape[2] for it in items)
    max_w = -(-max_w // pad_to) * pad_to
    images = torch.zeros(len(items), 1, height, max_w)
    for i, it in enumerate(items):
        images[i, :, :, : it["image"].shape[2]] = it["image"]
    return {
        "images": images,
        "widths": torch.tensor([it["width"] for it in items], dtype=torch.long),
        "texts": [it["text"] for it in items],
        "ids": [it["id"] for it in items],
    }


class WidthBucketSampler(Sampler[int]):
    """Shuffles, then sorts within pools of ``pool × batch_size`` lines so batches hold lines
    of similar width and padding stays small; the batch order is shuffled again.

    Transcription length stands in for image width: it is known without decoding any image
    and is close to proportional to the width of a handwritten line.

    Args:
        lengths: Text length of each line of the split.
        batch_size: The loader's batch size.
        pool: Batches per sorting pool (larger: less padding, less randomness).
        seed: Base seed; the epoch is added, so every epoch differs but runs repeat.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, pool: int = 50, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool = pool
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning's loops at each epoch start."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.pool * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for b in batches for i in b])
