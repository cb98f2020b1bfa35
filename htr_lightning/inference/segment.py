"""Splitting a page or paragraph image into text lines: deskew, then a projection profile.

Written here with numpy and PIL rather than taken from kraken's segmenter (a trained network
with its own heavy dependencies) or OpenCV/scikit-image (not otherwise needed): the classic
profile method is a few array operations, and it is all that a paragraph or a simple letter
page needs. It assumes horizontal lines of roughly equal spacing in one column.

Steps: grayscale, dark ink on light paper, Otsu binarisation at a working resolution; the skew
angle that makes the horizontal ink profile sharpest; the line period from the profile's
autocorrelation; one line per profile peak, cut at the minimum between neighbouring peaks;
each line cropped to the columns that hold its ink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from htr_lightning.data.transforms import normalize_polarity, to_grayscale

WORK_HEIGHT = 1000  # pages are analysed at about this height (the crops come from full size)


@dataclass(frozen=True)
class LineCrop:
    """One line cut out of a page.

    Attributes:
        image: The line, grayscale, from the deskewed full-resolution page.
        box: (left, top, right, bottom) of the crop in the deskewed page, in pixels.
        angle: Rotation applied to the page before cropping, in degrees (counter-clockwise).
        polygon: The box's corners (top left, top right, bottom right, bottom left) in the
            input image as given, before deskewing: where the line lies on the page.
    """

    image: Image.Image
    box: tuple[int, int, int, int]
    angle: float
    polygon: tuple[tuple[int, int], ...]


def unrotate(points: list[tuple[float, float]], angle: float, size: tuple[int, int],
             rotated_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Maps points of ``image.rotate(angle, expand=True)`` back onto ``image``.

    Args:
        points: (x, y) in the rotated image.
        angle: The rotation, in degrees counter-clockwise (PIL's convention).
        size: (width, height) of the image before rotating.
        rotated_size: (width, height) of the rotated (expanded) image.

    Returns:
        The points in the image before rotating, rounded and clipped to it.
    """
    # PIL rotates about the centre and, with expand, centres the result on the larger canvas,
    # so a point's offset from the rotated centre, turned back by the angle, is its offset
    # from the original centre.
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    (w, h), (rw, rh) = size, rotated_size
    out = []
    for x, y in points:
        dx, dy = x - rw / 2, y - rh / 2
        ox, oy = cos * dx - sin * dy + w / 2, sin * dx + cos * dy + h / 2
        out.append((min(max(round(ox), 0), w), min(max(round(oy), 0), h)))
    return tuple(out)


def box_corners(box: tuple[int, int, int, int]) -> tuple[tuple[int, int], ...]:
    """(left, top, right, bottom) as its corners: top left, top right, bottom right, bottom left."""
    left, top, right, bottom = box
    return ((left, top), (right, top), (right, bottom), (left, bottom))


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's global threshold of an 8-bit image: pixels below it are ink.

    >>> otsu_threshold(np.array([[10, 12, 200, 210]], dtype=np.uint8)) in range(12, 200)
    True
    """
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * levels)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = 0.0
    return int(between.argmax()) + 1


def skew_angle(ink: np.ndarray, max_angle: float = 5.0, step: float = 0.25) -> float:
    """The page rotation (degrees, counter-clockwise) that makes its lines horizontal.

    Each candidate angle shears the ink pixels' row coordinates (exact enough for a few
    degrees) and scores the sharpness of the row histogram (its sum of squares); the best
    candidate is refined with a step a fifth as large.

    Args:
        ink: (H, W) bool, True where there is ink.
        max_angle: Largest skew tried either way.
        step: Spacing of the first search.
    """
    ys, xs = np.nonzero(ink)
    if ys.size < 10:
        return 0.0
    xs = xs - ink.shape[1] / 2.0

    def sharpness(angle: float) -> float:
        rows = np.round(ys + xs * math.tan(math.radians(angle))).astype(np.int64)
        counts = np.bincount(rows - rows.min())
        return float(np.dot(counts, counts))

    best = max(np.arange(-max_angle, max_angle + step / 2, step), key=sharpness)
    fine = step / 5
    best = max(np.arange(best - step, best + step + fine / 2, fine), key=sharpness)
    return -float(best)  # shearing rows by +a undoes a clockwise tilt by a


def _smooth(profile: np.ndarray, width: int) -> np.ndarray:
    width = max(1, int(width))
    kernel = np.ones(width) / width
    return np.convolve(profile, kernel, mode="same")


def line_period(profile: np.ndarray, min_period: int = 8, prominence: float = 0.15) -> int | None:
    """The dominant spacing of text lines (rows), from the autocorrelation of the ink profile.

    Args:
        profile: Ink per row.
        min_period: Smallest spacing considered, in rows.
        prominence: How far the autocorrelation peak must rise above the lowest value before it.

    Returns:
        The period, or None when the profile has no repeating structure (one line).
    """
    centred = profile - profile.mean()
    n = centred.size
    if n < 3 * min_period or not centred.any():
        return None
    spectrum = np.fft.rfft(centred, 2 * n)
    corr = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    corr /= corr[0]
    upper = n // 2
    if upper <= min_period:
        return None
    # The first peak that rises clearly above the valley before it is the line period; later
    # peaks are its multiples or chance alignments of long lines.
    for lag in range(min_period, upper - 1):
        peak = corr[lag]
        if (peak >= corr[lag - 1] and peak > corr[lag + 1] and peak > 0.05
                and peak - corr[:lag].min() > prominence):
            return lag
    return None


def find_lines(ink: np.ndarray, min_gap_ratio: float = 0.5) -> list[tuple[int, int]]:
    """Row ranges of the text lines of a deskewed binary page, top to bottom.

    Args:
        ink: (H, W) bool.
        min_gap_ratio: Peaks closer than this fraction of the line period are one line.

    Returns:
        (top, bottom) row ranges, bottom exclusive; one range for a single line.
    """
    profile = ink.sum(axis=1).astype(np.float64)
    rows = np.flatnonzero(profile > 0)
    if rows.size == 0:
        return []
    period = line_period(profile)
    if period is None:
        return [(int(rows[0]), int(rows[-1]) + 1)]
    smooth = _smooth(profile, max(3, period // 3))
    level = 0.05 * np.percentile(smooth[smooth > 0], 95)
    peaks = [i for i in range(1, smooth.size - 1)
             if smooth[i] >= smooth[i - 1] and smooth[i] > smooth[i + 1] and smooth[i] > level]
    kept: list[int] = []
    for p in peaks:  # of peaks closer than min_gap_ratio · period, keep the stronger
        if kept and p - kept[-1] < min_gap_ratio * period:
            if smooth[p] > smooth[kept[-1]]:
                kept[-1] = p
            continue
        kept.append(p)
    if len(kept) <= 1:
        return [(int(rows[0]), int(rows[-1]) + 1)]
    cuts = [int(a + np.argmin(smooth[a:b])) for a, b in zip(kept, kept[1:])]
    bounds = [max(0, kept[0] - period)] + cuts + [min(ink.shape[0], kept[-1] + period)]
    lines = []
    for top, bottom in zip(bounds, bounds[1:]):
        filled = np.flatnonzero(profile[top:bottom] > 0)
        if filled.size:
            lines.append((top + int(filled[0]), top + int(filled[-1]) + 1))
    return lines


def _ink_columns(ink: np.ndarray, min_fraction: float = 0.02) -> tuple[int, int] | None:
    """First and last column (exclusive) holding a real share of a line's ink, so a speck at
    the margin does not stretch the crop to the page edge."""
    cols = ink.sum(axis=0)
    if not cols.any():
        return None
    smooth = _smooth(cols.astype(np.float64), max(3, ink.shape[0]))
    filled = np.flatnonzero(smooth > min_fraction * smooth.max())
    return int(filled[0]), int(filled[-1]) + 1


def paper_box(gray: np.ndarray, share: float = 0.75, reach: float = 0.15
              ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the paper inside a scan's dark border.

    A row or column is border when more than ``share`` of its pixels are much darker than the
    paper (the median grey). Within ``reach`` of each edge, everything up to the innermost
    border row or column is cut, so lighter strips inside a border go too.
    """
    dark_px = gray < 0.6 * float(np.median(gray))
    rows, cols = dark_px.mean(axis=1), dark_px.mean(axis=0)

    def inner(fractions: np.ndarray) -> tuple[int, int]:
        n = fractions.size
        band = max(1, int(reach * n))
        head = np.flatnonzero(fractions[:band] > share)
        tail = np.flatnonzero(fractions[n - band:] > share)
        start = int(head[-1]) + 1 if head.size else 0
        stop = n - band + int(tail[0]) if tail.size else n
        return start, max(start, stop)

    top, bottom = inner(rows)
    left, right = inner(cols)
    return left, top, right, bottom


def ink_threshold(gray: np.ndarray, max_ink: float = 0.1) -> int:
    """Grey level below which a pixel is ink: Otsu's threshold, lowered when it would call
    more than ``max_ink`` of the page ink (bleed-through and stains raise Otsu's level;
    handwriting covers a few percent of a page)."""
    return min(otsu_threshold(gray), int(np.percentile(gray, 100 * max_ink)) + 1)


def _without_edge_fragments(lines: list[tuple[int, int]], amounts: np.ndarray, height: int,
                            edge: float = 0.03, share: float = 0.5
                            ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Drops a first or last line that touches the image edge with less than ``share`` of the
    strongest line's ink: the cut-off descenders or ascenders of neighbours in a line crop."""
    if len(lines) < 2:
        return lines, amounts
    strongest = amounts.max()
    keep = np.ones(len(lines), dtype=bool)
    reach = max(2, int(edge * height))
    if lines[0][0] <= reach and amounts[0] < share * strongest:
        keep[0] = False
    if lines[-1][1] >= height - reach and amounts[-1] < share * strongest:
        keep[-1] = False
    return [line for line, k in zip(lines, keep) if k], amounts[keep]


def looks_like_page(image: Image.Image, max_aspect: float = 1.5) -> bool:
    """Whether ``segment="auto"`` splits an image: only when it is at most ``max_aspect``
    times as wide as it is high. Line images are wider; a crop of one line can hold pieces of
    its neighbours that a profile would take for lines (about 12 % of the Hooker test crops
    were split by :func:`split_lines`; 20 of its 571 crops are this narrow)."""
    return image.width <= max_aspect * image.height


def split_lines(image: Image.Image, max_angle: float = 5.0, pad: float = 0.3,
                min_ink: float = 0.05) -> list[LineCrop]:
    """Cuts an image into text lines in reading order (top to bottom).

    A single-line image comes back whole (one crop, unrotated), so line images and pages go
    through the same call.

    Args:
        image: Any PIL image (any mode, either polarity).
        max_angle: Largest skew corrected, in degrees.
        pad: Margin added above and below each line, as a fraction of the median line
            height. 0.3 was chosen on 12 Hooker val pages with a Hooker teacher (page CER
            27.6 / 25.0 / 25.2 / 27.2 % at 0.15 / 0.25 / 0.35 / 0.45): training crops from
            PAGE-XML polygons keep ascenders and descenders that a tight cut loses.
        min_ink: Lines with less ink than this fraction of the median line are dropped as
            specks or noise.

    Returns:
        The lines; empty for an image without ink.
    """
    gray = normalize_polarity(to_grayscale(image))
    scale = min(1.0, WORK_HEIGHT / max(gray.height, 1))
    small = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                        Image.Resampling.BILINEAR) if scale < 1 else gray
    arr = np.asarray(small)
    left, top, right, bottom = paper_box(arr)
    if right - left < 8 or bottom - top < 8:
        return []
    paper = arr[top:bottom, left:right]
    if int(paper.max()) - int(paper.min()) < 32:  # a blank or flat image has no ink to find
        return []
    threshold = ink_threshold(paper)
    outside = np.ones(arr.shape, dtype=bool)
    outside[top:bottom, left:right] = False
    ink = (arr < threshold) & ~outside
    angle = skew_angle(ink, max_angle)
    if abs(angle) >= 0.05:
        small = Image.fromarray(np.where(outside, 255, arr).astype(np.uint8)).rotate(
            angle, Image.Resampling.BILINEAR, expand=True, fillcolor=255)
        ink = np.asarray(small) < threshold
    else:
        angle = 0.0
    lines = find_lines(ink)
    amounts = np.array([ink[top:bottom].sum() for top, bottom in lines], dtype=np.float64)
    lines, amounts = _without_edge_fragments(lines, amounts, ink.shape[0])
    if len(lines) <= 1:
        whole = (0, 0, gray.width, gray.height)
        return [LineCrop(gray, whole, 0.0, box_corners(whole))] if lines else []
    page = gray.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=255) if angle else gray
    floor = min_ink * float(np.median(amounts))
    heights = [bottom - top for top, bottom in lines]
    margin = pad * float(np.median(heights))
    crops = []
    for (top, bottom), amount in zip(lines, amounts):
        if amount < floor:
            continue
        columns = _ink_columns(ink[top:bottom])
        if columns is None:
            continue
        left, right = columns
        box = (max(0, int((left - margin) / scale)), max(0, int((top - margin) / scale)),
               min(page.width, math.ceil((right + margin) / scale)),
               min(page.height, math.ceil((bottom + margin) / scale)))
        polygon = box_corners(box)
        if angle:
            polygon = unrotate(polygon, angle, gray.size, page.size)
        crops.append(LineCrop(page.crop(box), box, angle, polygon))
    return crops
