"""Tiny systems, line images and padded batches shared by the export and runtime tests."""

import numpy as np
import torch
from PIL import Image

from tiny_systems import TINY_TEACHER
from htr_lightning.models import TeacherSystem

CHARSET = "abcdefgh "


def tiny_system(cls=TeacherSystem, **overrides):
    """A tiny, deterministic system in eval mode whose frames are confident and varied (the
    output layer is scaled up), so that decoded texts are not all blanks."""
    torch.manual_seed(0)
    model = cls(CHARSET, **{**TINY_TEACHER, **overrides})
    with torch.no_grad():
        model.net.head.weight.mul_(20)
    return model.eval()


def line_images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    """Generated "lines": dark specks on light paper of growing size (each at least twice as
    wide as high, as lines are), in L and RGB modes, one light-on-dark."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = 30 + 7 * i, 60 + 45 * i
        arr = (255 - (rng.random((h, w)) < 0.15) * 200).astype(np.uint8)
        if i == 2:
            arr = 255 - arr
        image = Image.fromarray(arr, "L")
        images.append(image.convert("RGB") if i % 2 else image)
    return images


def padded_batch(widths: list[int], height: int = 32, multiple: int = 32, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images of the given content widths, zero-padded on the right to a common width
    rounded up to ``multiple``: (B, 1, H, W), (B,)."""
    g = torch.Generator().manual_seed(seed)
    width = -(-max(widths) // multiple) * multiple
    images = torch.rand(len(widths), 1, height, width, generator=g)
    for i, w in enumerate(widths):
        images[i, :, :, w:] = 0
    return images, torch.tensor(widths)
