import numpy as np
import pytest
from PIL import Image, ImageOps

from htr_lightning.data.synthetic import SyntheticLines, compose_page
from htr_lightning.inference.segment import otsu_threshold, paper_box, skew_angle, split_lines


def _lines(n, seed=0):
    # different word counts give lines of clearly different widths, so order can be checked
    source = SyntheticLines(n, split="test", seed=seed, min_words=1, max_words=6, font_size=(30, 34))
    return [s.load() for s in source]


def _ink_width(image):
    ink = np.asarray(image.convert("L")) < otsu_threshold(np.asarray(image.convert("L")))
    cols = np.flatnonzero(ink.sum(axis=0) > 0)
    return int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("seed,gaps,angle", [
    (0, [10, 25, 40, 15, 30], 0.0),
    (1, [20, 12, 35, 18, 28], 1.5),
    (2, [30, 16, 22, 40, 14], -2.5),
])
def test_stacked_lines_are_split_in_order(seed, gaps, angle):
    lines = _lines(len(gaps) + 1, seed)
    page, _ = compose_page(lines, gaps, angle=angle)
    crops = split_lines(page)
    assert len(crops) == len(lines)
    assert [c.box[1] for c in crops] == sorted(c.box[1] for c in crops)
    # each synthetic line has its own tilt of up to 1.5 degrees, so the page angle is rough
    assert crops[0].angle == pytest.approx(-angle, abs=1.0)
    # each crop holds the line placed there: its ink is as wide as that line's
    for crop, line in zip(crops, lines):
        assert _ink_width(crop.image) == pytest.approx(_ink_width(line), rel=0.12, abs=12)


def test_skew_angle_of_a_rotated_page():
    page, _ = compose_page(_lines(5, 3), 25)
    for angle in (-3.0, 0.0, 2.0):
        rotated = page.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=255)
        arr = np.asarray(rotated)
        assert skew_angle(arr < otsu_threshold(arr)) == pytest.approx(-angle, abs=0.2)


def test_single_line_passes_through_whole():
    line = _lines(1, 4)[0]
    crops = split_lines(line)
    assert len(crops) == 1
    assert crops[0].box == (0, 0, line.width, line.height) and crops[0].angle == 0.0
    assert crops[0].image.size == line.size


def test_light_on_dark_page_splits_like_its_inverse():
    page, _ = compose_page(_lines(4, 5), [20, 30, 25], angle=1.0)
    normal = split_lines(page)
    inverted = split_lines(ImageOps.invert(page))
    assert [c.box for c in inverted] == [c.box for c in normal]
    assert np.array_equal(np.asarray(inverted[1].image), np.asarray(normal[1].image))


def test_blank_image_has_no_lines():
    assert split_lines(Image.new("L", (400, 300), 255)) == []
    assert split_lines(Image.new("RGB", (400, 300), (20, 20, 20))) == []


def test_dark_scan_border_is_cut_off():
    page, _ = compose_page(_lines(4, 6), 25)
    framed = ImageOps.expand(page, border=60, fill=10)
    left, top, right, bottom = paper_box(np.asarray(framed))
    assert (left, top) == (60, 60)
    assert (right, bottom) == (60 + page.width, 60 + page.height)
    assert len(split_lines(framed)) == 4
