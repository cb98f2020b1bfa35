"""Preprocessing shared by training and inference, and training-only augmentation.

Every image, whatever its mode or polarity, goes through :class:`LinePreprocessor`: grayscale,
dark ink on light paper, height normalised keeping the aspect ratio, then a float tensor with
ink = 1 and background = 0, so that zero padding is background. Training adds
:class:`LineAugment` on the grayscale image before resizing (and, for its ``quantize`` setting,
after it).

Augmentation is written on PIL and numpy rather than taken from albumentations/kornia: the ops
needed are a handful of affine, mesh and point operations that PIL does natively, and it keeps
OpenCV and torchvision (which has no CPU build here) out of the dependencies.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps


def to_grayscale(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit grayscale "L".

    16-bit images are scaled from 0-65535 and 32-bit ones by their own range (PIL's
    ``convert("L")`` would clip them), transparency is flattened onto white, palette/CMYK/RGB go
    through PIL's conversions; CIELab (a TIFF mode PIL cannot convert) keeps its lightness.
    """
    if image.mode == "LAB":
        return image.getchannel("L")
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


def check_levels(levels: int) -> None:
    """Raises ValueError unless ``levels`` is a grey-level count :func:`quantize_levels` takes."""
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, not {levels}")


def quantize_levels(gray: Image.Image, levels: int) -> Image.Image:
    """Keeps ``levels`` grey levels of an "L" image, spread evenly over 0-255, each pixel
    rounded to the nearest (``levels`` 256: the image unchanged).

    Written here rather than taken from ``ImageOps.posterize``, which keeps the top bits (a
    power of two of levels, rounded down, so the image also darkens by up to one step).

    >>> quantize_levels(Image.new("L", (1, 1), 180), 16).getpixel((0, 0))
    187
    """
    check_levels(levels)
    if levels == 256:
        return gray
    step = 255 / (levels - 1)
    pixels = np.round(np.round(np.asarray(gray) / step) * step).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def normalize_polarity(gray: Image.Image) -> Image.Image:
    """Returns the image with dark ink on light background.

    A text line is mostly background, so a median below mid-grey means light-on-dark.
    """
    if np.median(np.asarray(gray)) < 128:
        return ImageOps.invert(gray)
    return gray


class LineAugment:
    """Random distortions of a grayscale line image (dark ink on light background).

    Args:
        rotation: Max rotation in degrees (SPEC: ±1°).
        shear: Max horizontal shear factor.
        scale: Max relative scale change (0.1 = ±10 %).
        width_jitter: Max relative width change (0.2 = ±20 %).
        grid: Probability of the mesh (grid) distortion.
        morphology: Probability of erosion or dilation (3×3 min/max filter).
        photometric: Probability of brightness/contrast/gamma change.
        quantize: Probability of keeping only 8, 16 or 32 grey levels (one of them at random),
            applied by :meth:`quantized` after the line is resized to the network's height, as
            a packed or low-bit-depth collection stores it. Default 0 (off): the recipes
            measured here trained without it; a network trained on clean 256-level scans can
            read the same lines at 16 levels far worse (README, Hooker results).
        seed: Seed of a private RNG; None uses the ``random`` module, which PyTorch seeds
            differently in every DataLoader worker (a private RNG made before the workers fork
            would repeat the same distortions in each of them).
    """

    SETTINGS = ("rotation", "shear", "scale", "width_jitter", "grid", "morphology", "photometric",
                "quantize")
    PROBABILITIES = ("grid", "morphology", "photometric", "quantize")
    QUANTIZE_LEVELS = (8, 16, 32)

    def __init__(
        self,
        rotation: float = 1.0,
        shear: float = 0.3,
        scale: float = 0.1,
        width_jitter: float = 0.2,
        grid: float = 0.5,
        morphology: float = 0.3,
        photometric: float = 0.5,
        quantize: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.rotation = rotation
        self.shear = shear
        self.scale = scale
        self.width_jitter = width_jitter
        self.grid = grid
        self.morphology = morphology
        self.photometric = photometric
        self.quantize = quantize
        self.rng = random.Random(seed) if seed is not None else random
        for name in self.SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"augmentation {name} must be a number >= 0, not {value!r}")
        for name in self.PROBABILITIES:
            if getattr(self, name) > 1:
                raise ValueError(f"augmentation {name} is a probability, not {getattr(self, name)!r}")
        if scale >= 1 or width_jitter >= 1:
            raise ValueError(f"augmentation scale and width_jitter must be below 1 (a relative "
                             f"change), not {scale!r} and {width_jitter!r}")

    @classmethod
    def from_option(cls, option: bool | dict | None) -> LineAugment | None:
        """The augmentation a data option asks for: True the defaults, False/None none, a dict
        the defaults with those settings replaced (an unknown name is an error naming the known
        ones)."""
        if option is None or option is False:
            return None
        if option is True:
            return cls()
        if not isinstance(option, dict):
            raise ValueError(f"augment must be true, false or a mapping of LineAugment settings, "
                             f"not {option!r}")
        unknown = sorted(set(option) - set(cls.SETTINGS))
        if unknown:
            raise ValueError(f"unknown augmentation setting(s) {unknown}; known: {', '.join(cls.SETTINGS)}")
        return cls(**option)

    def __call__(self, img: Image.Image) -> Image.Image:
        """Applies a random subset of the distortions.

        Args:
            img: Grayscale "L" image, dark ink on light background, of size (W, H).

        Returns:
            A grayscale image; its size may differ (shear, scale, width jitter).
        """
        r = self.rng
        img = self._affine(img)
        if r.random() < self.grid:
            img = self._mesh(img)
        if r.random() < self.morphology:
            img = img.filter(ImageFilter.MinFilter(3) if r.random() < 0.5 else ImageFilter.MaxFilter(3))
        if r.random() < self.photometric:
            img = self._photometric(img)
        return img

    def quantized(self, img: Image.Image) -> Image.Image:
        """With probability ``quantize``, the image at 8, 16 or 32 grey levels (else as it is);
        called on the resized line, so the levels are those the network sees."""
        if self.quantize and self.rng.random() < self.quantize:
            return quantize_levels(img, self.rng.choice(self.QUANTIZE_LEVELS))
        return img

    def _affine(self, img: Image.Image) -> Image.Image:
        r = self.rng
        w, h = img.size
        f = 1.0 + r.uniform(-self.scale, self.scale)
        fx = f * (1.0 + r.uniform(-self.width_jitter, self.width_jitter))
        sh = r.uniform(-self.shear, self.shear)
        angle = np.deg2rad(r.uniform(-self.rotation, self.rotation))
        # Forward map: scale, shear x by y, rotate. PIL wants the inverse map (output -> input).
        fwd = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        fwd = fwd @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([fx, f])
        corners = fwd @ np.array([[0, w, 0, w], [0, 0, h, h]], dtype=float)
        lo = corners.min(axis=1)
        out_w = max(1, int(np.ceil(corners[0].max() - lo[0])))
        out_h = max(1, int(np.ceil(corners[1].max() - lo[1])))
        inv = np.linalg.inv(fwd)
        offset = inv @ lo
        coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
        return img.transform((out_w, out_h), Image.Transform.AFFINE, coeffs,
                             resample=Image.Resampling.BILINEAR, fillcolor=255)

    def _mesh(self, img: Image.Image) -> Image.Image:
        # One row of quads whose shared vertices are jittered: a smooth elastic-like warp.
        r = self.rng
        w, h = img.size
        cells = max(1, w // max(h, 1))
        xs = np.linspace(0, w, cells + 1)
        amp = 0.06 * h
        top = [(x + r.uniform(-amp, amp), r.uniform(-amp, amp)) for x in xs]
        bottom = [(x + r.uniform(-amp, amp), h + r.uniform(-amp, amp)) for x in xs]
        mesh = []
        for i in range(cells):
            box = (int(xs[i]), 0, int(xs[i + 1]), h)
            quad = (*top[i], *bottom[i], *bottom[i + 1], *top[i + 1])
            mesh.append((box, quad))
        return img.transform((w, h), Image.Transform.MESH, mesh,
                             resample=Image.Resampling.BILINEAR, fillcolor=255)

    def _photometric(self, img: Image.Image) -> Image.Image:
        r = self.rng
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr ** r.uniform(0.7, 1.4)
        contrast = r.uniform(0.7, 1.2)
        arr = (arr - 0.5) * contrast + 0.5 + r.uniform(-0.1, 0.1)
        return Image.fromarray((np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8), "L")


class LinePreprocessor:
    """Turns any line image into the network's input tensor.

    Args:
        height: Output height in pixels.
        fixed_width: If set, every line is placed on a ``height × fixed_width`` canvas
            (scaled to fit, padded right), as the best-practices model wants.
        max_width: Lines wider than this after height normalisation are squeezed to it (a
            50,000-pixel line must not exhaust memory).
        min_width: Narrower lines are padded to it, so the network has at least a few frames.

    >>> import PIL.Image
    >>> x, w = LinePreprocessor(height=32)(PIL.Image.new("L", (200, 50), 255))
    >>> tuple(x.shape), w
    ((1, 32, 128), 128)
    """

    def __init__(self, height: int = 64, fixed_width: int | None = None,
                 max_width: int = 4096, min_width: int = 16) -> None:
        self.height = height
        self.fixed_width = fixed_width
        self.max_width = fixed_width or max_width
        self.min_width = min_width

    def scaled(self, image: Image.Image, augment: LineAugment | None = None) -> Image.Image:
        """The image as the network sees it, before it becomes a tensor: grayscale "L", dark
        ink on light paper, augmented if asked, ``height`` high, at most ``max_width`` wide."""
        gray = normalize_polarity(to_grayscale(image))
        if augment is not None:
            gray = augment(gray)
        w, h = gray.size
        new_w = max(1, round(w * self.height / max(h, 1)))
        new_w = min(new_w, self.max_width)
        gray = gray.resize((new_w, self.height), Image.Resampling.BILINEAR)
        return augment.quantized(gray) if augment is not None else gray

    def __call__(self, image: Image.Image, augment: LineAugment | None = None) -> tuple[torch.Tensor, int]:
        """Preprocesses one image.

        Returns:
            The tensor (1, height, W) float32 in [0, 1] with ink = 1, and the content width
            (W, or less than W when a fixed canvas pads it).
        """
        gray = self.scaled(image, augment)
        new_w = gray.width
        ink = 1.0 - torch.from_numpy(np.asarray(gray, dtype=np.float32)) / 255.0
        canvas_w = self.fixed_width or max(new_w, self.min_width)
        if canvas_w > new_w:
            ink = torch.nn.functional.pad(ink, (0, canvas_w - new_w))
        return ink.unsqueeze(0), (new_w if self.fixed_width else canvas_w)
