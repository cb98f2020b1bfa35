import numpy as np
import pytest
from PIL import Image, ImageOps

from htr_lightning.data.synthetic import SyntheticLines, compose_page
from htr_lightning.inference.segment import (otsu_threshold, paper_box, skew_angle, split_lines,
                                             unrotate)


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
    assert crops[0].polygon == ((0, 0), (line.width, 0), (line.width, line.height), (0, line.height))
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


@pytest.mark.parametrize("angle", [3.0, -4.5])
def test_unrotate_finds_a_dot_where_it_was(angle):
    page = np.full((300, 400), 255, np.uint8)
    page[200:204, 300:304] = 0  # a dot centred on (302, 202)
    image = Image.fromarray(page)
    rotated = image.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=255)
    ys, xs = np.nonzero(np.asarray(rotated) < 128)
    assert rotated.size != image.size
    got = unrotate([(xs.mean() + 0.5, ys.mean() + 0.5)], angle, image.size, rotated.size)
    assert got[0] == pytest.approx((302, 202), abs=1)


@pytest.mark.parametrize("angle", [0.0, 2.0, -3.0, 4.0])
def test_line_polygons_lie_on_their_lines_in_the_skewed_page(angle):
    lines = _lines(4, 6)
    gaps = [25, 30, 20]
    page, rows = compose_page(lines, gaps, angle=angle)
    # Where each line lies in the page: the unrotated page's line rectangles, labelled 1..4
    # and rotated exactly as compose_page rotated the page.
    margin = 40
    labels = np.zeros((sum(x.height for x in lines) + sum(gaps) + 2 * margin,
                       max(x.width for x in lines) + 2 * margin), np.uint8)
    for number, ((top, bottom), line) in enumerate(zip(rows, lines), 1):
        labels[top:bottom, margin:margin + line.width] = number
    label_page = np.asarray(Image.fromarray(labels).rotate(angle, Image.Resampling.NEAREST,
                                                           expand=True))
    assert label_page.shape == (page.height, page.width)
    crops = split_lines(page)
    assert len(crops) == 4
    for number, crop in enumerate(crops, 1):
        xs, ys = [p[0] for p in crop.polygon], [p[1] for p in crop.polygon]
        assert len(crop.polygon) == 4
        assert 0 <= min(xs) and max(xs) <= page.width and 0 <= min(ys) and max(ys) <= page.height
        # The polygon is centred on its line (within 5 px; skipping the deskew rotation
        # misses by up to 16 px at these angles).
        line_ys, line_xs = np.nonzero(label_page == number)
        assert np.mean(xs) == pytest.approx(line_xs.mean(), abs=5)
        assert np.mean(ys) == pytest.approx(line_ys.mean(), abs=5)
