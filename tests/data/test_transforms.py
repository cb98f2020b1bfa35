import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from htr_lightning.data.transforms import LineAugment, LinePreprocessor, quantize_levels, to_grayscale


def _line(width=200, height=50):
    img = Image.new("L", (width, height), 235)
    ImageDraw.Draw(img).text((10, 5), "hello line", fill=20, font=ImageFont.load_default(size=32))
    return img


def test_light_on_dark_gives_the_same_tensor_as_its_inverse():
    pre = LinePreprocessor(height=32)
    img = _line()
    a, wa = pre(img)
    b, wb = pre(ImageOps.invert(img))
    assert wa == wb and torch.allclose(a, b)
    assert a.mean() < 0.5  # background is 0, ink is 1


def test_height_normalised_keeping_aspect():
    x, w = LinePreprocessor(height=64)(_line(300, 50))
    assert x.shape == (1, 64, 384) and w == 384


def test_very_wide_line_is_squeezed_to_max_width():
    x, w = LinePreprocessor(height=32, max_width=1024)(Image.new("L", (50_000, 40), 255))
    assert x.shape == (1, 32, 1024) and w == 1024


def test_narrow_image_padded_to_min_width():
    x, w = LinePreprocessor(height=32, min_width=16)(Image.new("L", (10, 40), 255))
    assert x.shape == (1, 32, 16) and w == 16
    x, w = LinePreprocessor(height=32)(Image.new("L", (1, 1), 255))
    assert x.shape == (1, 32, 32) and w == 32


def test_fixed_canvas_pads_right_and_reports_content_width():
    x, w = LinePreprocessor(height=32, fixed_width=256)(_line(100, 50))
    assert x.shape == (1, 32, 256) and w == 64
    assert x[..., w:].abs().sum() == 0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "I;16", "I", "P", "1"])
def test_every_mode_becomes_the_same_grayscale(mode):
    gray = _line()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    elif mode == "I":  # 32-bit: stretched by its own range, so use a full-range line here
        gray = Image.fromarray(np.where(np.asarray(gray) < 128, 0, 255).astype(np.uint8))
        img = gray.convert("I")
    else:
        img = gray.convert(mode)
    out = np.asarray(to_grayscale(img), dtype=float)
    assert out.shape == np.asarray(gray).shape
    if mode != "1":  # a bilevel image keeps only the sign of the ink
        assert np.abs(out - np.asarray(gray, dtype=float)).mean() < 3


def test_transparent_background_is_white():
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    assert np.asarray(to_grayscale(rgba)).min() == 255


def test_augmentation_is_seeded_and_keeps_ink():
    img = _line()
    a = LineAugment(seed=1)(img)
    b = LineAugment(seed=1)(img)
    c = LineAugment(seed=2)(img)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size != c.size or not np.array_equal(np.asarray(a), np.asarray(c))
    ink = (np.asarray(a) < 128).sum()
    assert 0.3 < ink / (np.asarray(img) < 128).sum() < 3


def test_augment_option_true_false_or_settings():
    assert LineAugment.from_option(False) is None and LineAugment.from_option(None) is None
    default = LineAugment.from_option(True)
    assert (default.shear, default.morphology) == (0.3, 0.3)
    custom = LineAugment.from_option({"shear": 0.6, "morphology": 0})
    assert (custom.shear, custom.morphology, custom.grid) == (0.6, 0, 0.5)  # the rest: defaults


@pytest.mark.parametrize("levels", [2, 8, 16, 255])
def test_quantize_levels_rounds_to_evenly_spread_levels(levels):
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    out = np.asarray(quantize_levels(ramp, levels)).astype(float)
    step = 255 / (levels - 1)
    assert len(np.unique(out)) == levels
    assert {0.0, 255.0} <= set(np.unique(out))
    assert np.abs(out - np.arange(256).reshape(16, 16)).max() <= step / 2 + 0.5
    assert quantize_levels(ramp, 256) is ramp


def test_quantize_levels_rejects_a_level_count_outside_2_to_256():
    with pytest.raises(ValueError, match="levels must be in 2..256, not 1"):
        quantize_levels(Image.new("L", (4, 4)), 1)


def test_quantize_augmentation_acts_at_the_network_height():
    # A smooth ramp: at the output height it has far more than 32 grey values, so only a
    # quantization after the resize leaves 32 or fewer, all on one of the level grids.
    ramp = Image.fromarray(np.tile(np.linspace(40, 250, 300), (50, 1)).astype(np.uint8), "L")
    pre = LinePreprocessor(height=32)
    assert len(np.unique(np.asarray(pre.scaled(ramp)))) > 100
    grids = {n: set(np.round(np.round(np.arange(256) / (255 / (n - 1))) * (255 / (n - 1))))
             for n in LineAugment.QUANTIZE_LEVELS}
    off = {k: 0 for k in LineAugment.SETTINGS}
    seen = set()
    for seed in range(12):
        out = np.asarray(pre.scaled(ramp, LineAugment(**{**off, "quantize": 1.0}, seed=seed)))
        values = set(np.unique(out).astype(float))
        fits = [n for n, grid in grids.items() if values <= grid]
        assert fits and len(values) <= 32
        seen.add(min(fits))
    assert seen == set(LineAugment.QUANTIZE_LEVELS)  # each level count is drawn
    never = LineAugment(**off, seed=0)
    assert np.array_equal(np.asarray(pre.scaled(ramp, never)), np.asarray(pre.scaled(ramp)))


def test_augment_option_all_zero_is_the_identity():
    img = _line()
    off = LineAugment.from_option({"rotation": 0, "shear": 0, "scale": 0, "width_jitter": 0,
                                   "grid": 0, "morphology": 0, "photometric": 0})
    assert np.array_equal(np.asarray(off(img)), np.asarray(img))


@pytest.mark.parametrize("option, message", [
    ({"sheer": 0.5}, r"unknown augmentation setting\(s\) \['sheer'\]; known: rotation, shear"),
    ({"grid": 1.5}, "grid is a probability"),
    ({"rotation": -1}, "rotation must be a number >= 0"),
    ({"width_jitter": 1.0}, "must be below 1"),
    ("strong", "augment must be true, false or a mapping"),
])
def test_augment_option_errors_name_the_setting(option, message):
    with pytest.raises(ValueError, match=message):
        LineAugment.from_option(option)
