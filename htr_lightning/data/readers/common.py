"""Pieces shared by the dataset readers: split lists, text, XML, images and page-line cutting.

Skip reasons (one constant each), split-list and transcription reading, text decoding and
cleaning, XML parsing with DOCTYPE/ENTITY refusal, image lookup by stem, and the cutter that
turns the lines of a parsed page into grayscale PNG crops (band geometry around baselines,
PNG encoding, the per-page ``.npz`` cache). The cutter serves PAGE-XML / ALTO pages
(:mod:`~htr_lightning.data.readers.pagexml`) and IAM forms (:mod:`~htr_lightning.data.readers.iam`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport, read_image
from htr_lightning.data.transforms import to_grayscale
from htr_lightning.text.normalize import normalize_text

log = logging.getLogger("htr_lightning.data")

SPLITS = ("train", "val", "test")
# The file suffixes of the formats samples.read_image decodes, in order of preference when a
# line has several images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# Reasons under which lines are recorded in the SkipReport (one constant each, so tests and
# callers can ask ``report.count(NO_TEXT)`` without repeating strings).
NO_TEXT = "no transcription"
EMPTY_TEXT = "empty transcription"
LATIN1_TEXT = "transcription not UTF-8, read as Latin-1 (kept)"
NO_IMAGE = "image missing"
DUPLICATE_ID = "duplicate id"
UNREADABLE_IMAGE = "unreadable page image"
BAD_XML = "malformed XML"
DTD_REFUSED = "XML with DOCTYPE/ENTITY refused"
OUTSIDE_ROOT = "image path outside the dataset root refused"
BAD_POLYGON = "unusable line polygon"
NOT_LISTED = "listed id not found"
SEGMENTATION_ERR = "marked err in lines.txt (skip_err=True)"
UNSUPPORTED = "unsupported layout"


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


class _ReportScope:
    """Gives a reader a report to write to, and logs it at the end when the caller passed none."""

    def __init__(self, report: SkipReport | None, where: str) -> None:
        self.own = report is None
        self.report = SkipReport(where) if report is None else report

    def __enter__(self) -> SkipReport:
        return self.report

    def __exit__(self, *exc: object) -> None:
        if self.own and exc[0] is None:
            self.report.log()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _dataset_root(root: str | Path, expected: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset root {path} does not exist or is not a folder; expected {expected}"
        )
    return path


def _spec_path(root: Path, split_spec: str | Path) -> Path:
    path = Path(split_spec).expanduser()
    return path if path.is_absolute() else root / path


def _read_list(path: Path, expected: str) -> list[str]:
    """Reads a split list: one entry per line, blank lines and ``#`` comments ignored, order kept,
    repeats dropped. Entries keep inner spaces (page ids such as ``JDH_2_16_182_001 (1)``)."""
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found; expected {expected}")
    entries = []
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return list(dict.fromkeys(entries))


def _decode_text(raw: bytes, where: str, report: SkipReport) -> str:
    """UTF-8 (with or without BOM) first; Latin-1 never fails, so it is the reported fallback."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.add(LATIN1_TEXT, where)
        return raw.decode("latin-1")


def _clean(text: str | None, where: str, report: SkipReport) -> str | None:
    """Normalised text, or None (reported as empty) when nothing but whitespace is left."""
    text = normalize_text(text or "")
    if not text:
        report.add(EMPTY_TEXT, where)
        return None
    return text


def _read_transcription(path: Path, report: SkipReport) -> str | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        report.add(NO_TEXT, str(path))
        return None
    except OSError as err:
        report.add(NO_TEXT, f"{path} ({err})")
        return None
    return _clean(_decode_text(raw, str(path), report), str(path), report)


def _find_image(stem: Path) -> Path | None:
    """``stem`` plus the first image suffix (lower or upper case) that exists."""
    for suffix in IMAGE_SUFFIXES:
        for cased in (suffix, suffix.upper()):
            candidate = stem.with_name(stem.name + cased)
            if candidate.is_file():
                return candidate
    return None


def _number(text: str | None) -> float | None:
    """A finite number from an XML attribute, or None (missing, not a number, nan, inf)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _local(tag: object) -> str:
    """Tag name without namespace, so every PAGE / ALTO schema version matches."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


# Refused before parsing: ElementTree would expand internal entities (billion laughs) and the
# formats we read never need a DTD. Expat reads ASCII-compatible 8-bit encodings and UTF-16 in
# either byte order, with or without a BOM, so the document is searched as Latin-1 and as both
# UTF-16s: no encoding can hide a declaration from the check.
_DTD_PATTERN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PROBE_ENCODINGS = ("latin-1", "utf-16-le", "utf-16-be")


def _parse_xml(path: Path, report: SkipReport) -> ET.Element | None:
    """Parses one XML file, refusing DTDs and entity declarations; None (reported) on failure."""
    try:
        data = path.read_bytes()
    except OSError as err:
        report.add(BAD_XML, f"{path} ({err})")
        return None
    if any(_DTD_PATTERN.search(data.decode(enc, errors="replace")) for enc in _PROBE_ENCODINGS):
        report.add(DTD_REFUSED, str(path))
        return None
    try:
        return ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as err:
        # LookupError: an unknown declared encoding; ValueError: a multi-byte one expat lacks.
        report.add(BAD_XML, f"{path} ({err})")
        return None


# --------------------------------------------------------------------------------------------
# cutting lines out of page images (PAGE-XML, ALTO, IAM forms)
# --------------------------------------------------------------------------------------------


@dataclass
class _Line:
    """One line to cut: ``polygon`` (N, 2) and ``baseline`` (M, 2) in page pixels, or None."""

    line_id: str
    text: str
    polygon: np.ndarray | None
    baseline: np.ndarray | None


@dataclass
class _Page:
    """A parsed page: its image and the lines that have text, in reading order."""

    page_id: str
    xml_path: Path
    image_path: Path
    lines: list[_Line]
    declared_size: tuple[float, float] | None = None  # size the coordinates refer to


@dataclass(frozen=True)
class _Geometry:
    """Options that change the crops (they are part of the cache key)."""

    thin_ratio: float = 0.5
    outlier_ratio: float = 4.0
    ascender: float | None = None
    descender: float | None = None
    rotate_vertical: bool = True
    pad_to_band: bool = True
    rectify: bool = False


# Used only when a page has no line with a trustworthy polygon to measure the band from: the
# band is then taken from the spacing of consecutive baselines, split as measured on the Hooker
# pages (median ascent 0.64, descent 0.38 of the polygon height).
_ASCENT_OF_SPACING = 0.64
_DESCENT_OF_SPACING = 0.38
# The baseline band reaches this fraction of the line height beyond the baseline's ends; Hooker
# polygons extend a median 0.07 (left) and 0.04 (right) of the line height beyond them.
_BAND_END_PAD = 0.1


def _to_canonical(points: np.ndarray, turn: int, size: tuple[int, int]) -> np.ndarray:
    """Maps page points into the frame of the page turned so that the line reads left to right.

    ``turn`` 1 is ``Image.Transpose.ROTATE_90`` (counter-clockwise, for text written downwards),
    3 is ``ROTATE_270`` (text written upwards); 0 leaves the points unchanged.
    """
    width, height = size
    x, y = points[:, 0], points[:, 1]
    if turn == 1:
        return np.stack([y, width - x], axis=1)
    if turn == 3:
        return np.stack([height - y, x], axis=1)
    return points


def _area(polygon: np.ndarray) -> float:
    """Shoelace area of a closed polygon (N, 2); 0 for degenerate ones."""
    x, y = polygon[:, 0], polygon[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _turn_of(line: _Line, geometry: _Geometry) -> int:
    """0 for horizontal lines; 1 or 3 for vertical ones (by the baseline's direction)."""
    if not geometry.rotate_vertical or line.baseline is None or len(line.baseline) < 2:
        return 0
    dx, dy = line.baseline[-1] - line.baseline[0]
    if abs(dy) <= abs(dx):
        return 0
    return 1 if dy > 0 else 3


@dataclass
class _Measured:
    polygon: np.ndarray | None  # canonical frame, None when degenerate
    baseline: np.ndarray | None
    height: float = 0.0  # polygon bbox height clipped to the page
    ascent: float | None = None  # baseline (median) minus polygon top
    descent: float | None = None
    turn: int = 0
    # The polygon's reach above and below the baseline measured at each vertex's own x (the
    # baseline interpolated there), so that a sloping line's band is not inflated by its slope.
    local_ascent: float | None = None
    local_descent: float | None = None


def _measure(line: _Line, geometry: _Geometry, size: tuple[int, int]) -> _Measured:
    turn = _turn_of(line, geometry)
    canon_size = size if turn == 0 else (size[1], size[0])
    poly = line.polygon
    if poly is not None and (len(np.unique(poly, axis=0)) < 3 or _area(poly) < 1):
        poly = None
    base = line.baseline if line.baseline is not None and len(line.baseline) >= 2 else None
    m = _Measured(
        None if poly is None else _to_canonical(poly, turn, size),
        None if base is None else _to_canonical(base, turn, size),
        turn=turn,
    )
    if m.polygon is not None:
        top = max(float(m.polygon[:, 1].min()), 0.0)
        bottom = min(float(m.polygon[:, 1].max()), float(canon_size[1]))
        m.height = max(bottom - top, 0.0)
        if m.baseline is not None:
            level = float(np.median(m.baseline[:, 1]))
            m.ascent, m.descent = level - top, bottom - level
            m.local_ascent, m.local_descent = _local_reach(m.polygon, m.baseline)
    return m


def _local_reach(polygon: np.ndarray, baseline: np.ndarray) -> tuple[float | None, float | None]:
    """How far the polygon reaches above and below the baseline, each vertex compared with the
    baseline at its own x (beyond the baseline's ends, its end segments carried on); (None, None)
    for a baseline with no horizontal extent."""
    order = np.argsort(baseline[:, 0], kind="stable")
    bx, by = baseline[order, 0], baseline[order, 1]
    if bx[-1] - bx[0] < 1:
        return None, None
    x = polygon[:, 0]
    level = np.interp(x, bx, by)
    first, last = np.argmax(bx > bx[0]), len(bx) - 1 - np.argmax(bx[::-1] < bx[-1])
    level = np.where(x < bx[0], by[0] + (x - bx[0]) * (by[first] - by[0]) / (bx[first] - bx[0]), level)
    level = np.where(x > bx[-1], by[-1] + (x - bx[-1]) * (by[-1] - by[last]) / (bx[-1] - bx[last]), level)
    offsets = polygon[:, 1] - level
    return max(float(-offsets.min()), 0.0), max(float(offsets.max()), 0.0)


def _page_band(measured: list[_Measured], geometry: _Geometry) -> tuple[float | None, float, float]:
    """Line height, ascent and descent of a page (pixels), from its ordinary lines.

    Ordinary lines are those whose polygon is neither thin (< ``thin_ratio`` x median height,
    the baseline-hugging polygons) nor an outlier (> ``outlier_ratio`` x median). Line height is
    None when nothing on the page can be measured.
    """
    heights = np.array([m.height for m in measured if m.polygon is not None and m.height > 0])
    line_height: float | None = None
    ascent = descent = 0.0
    if len(heights):
        first = float(np.median(heights))
        low, high = geometry.thin_ratio * first, geometry.outlier_ratio * first
        ordinary = [m for m in measured if m.polygon is not None and low <= m.height <= high]
        if ordinary:
            line_height = float(np.median([m.height for m in ordinary]))
            if geometry.rectify:  # the band is measured across the line, not the page
                ascents = [m.local_ascent for m in ordinary if m.local_ascent is not None]
                descents = [m.local_descent for m in ordinary if m.local_descent is not None]
                if ascents:  # a sloping line's bounding box is taller than the line
                    line_height = float(np.median(np.add(ascents, descents)))
            else:
                ascents = [m.ascent for m in ordinary if m.ascent is not None]
                descents = [m.descent for m in ordinary if m.descent is not None]
            if ascents:
                ascent, descent = float(np.median(ascents)), float(np.median(descents))
    levels = sorted(
        float(np.median(m.baseline[:, 1]))
        for m in measured
        if m.baseline is not None and m.turn == 0
    )
    if (line_height is None or ascent <= 0) and len(levels) >= 2:
        spacing = float(np.median(np.diff(levels)))
        if spacing > 0:
            line_height = line_height or spacing
            ascent, descent = _ASCENT_OF_SPACING * spacing, _DESCENT_OF_SPACING * spacing
    if line_height is not None:
        # A page whose polygons all sit above (or below) their baselines would give a band of
        # zero on one side; keep at least a tenth of the line height on each.
        ascent = max(ascent, 0.1 * line_height)
        descent = max(descent, 0.1 * line_height)
    if geometry.ascender is not None:
        ascent = geometry.ascender
    if geometry.descender is not None:
        descent = geometry.descender
    if line_height is None and geometry.ascender is not None and geometry.descender is not None:
        line_height = geometry.ascender + geometry.descender
    return line_height, ascent, descent


def _band_polygon(baseline: np.ndarray, ascent: float, descent: float, pad: float) -> np.ndarray:
    """The band from ``baseline - ascent`` to ``baseline + descent`` following the baseline,
    reaching ``pad`` beyond its ends; (2M, 2) polygon in the same frame as the baseline."""
    base = baseline.copy()
    step = -pad if base[0, 0] <= base[-1, 0] else pad
    base[0, 0] += step
    base[-1, 0] -= step
    upper = base - np.array([0.0, ascent])
    lower = (base + np.array([0.0, descent]))[::-1]
    return np.concatenate([upper, lower])


def _masked_box(image: Image.Image, shapes: list[np.ndarray], corners: np.ndarray
                ) -> tuple[Image.Image, int, int] | None:
    """The box around ``corners`` clipped to the image, pixels outside ``shapes`` painted white,
    with its top-left corner; None when less than 2 px of it lie on the page."""
    # PAGE coordinates are pixel indices: the box includes its last row and column.
    x0 = max(math.floor(float(corners[:, 0].min())), 0)
    y0 = max(math.floor(float(corners[:, 1].min())), 0)
    x1 = min(math.floor(float(corners[:, 0].max())) + 1, image.width)
    y1 = min(math.floor(float(corners[:, 1].max())) + 1, image.height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(mask)
    for shape in shapes:
        draw.polygon([(float(x) - x0, float(y) - y0) for x, y in shape], fill=255)
    white = Image.new("L", mask.size, 255)
    return Image.composite(image.crop((x0, y0, x1, y1)), white, mask), x0, y0


def _rectified(image: Image.Image, shapes: list[np.ndarray], baseline: np.ndarray, ascent: float,
               descent: float, pad: float) -> Image.Image | None:
    """The line straightened along its baseline: a strip ``ascent + descent`` pixels high whose
    row ``ascent`` is the baseline and whose columns follow the baseline's arc length (reaching
    ``pad`` beyond its ends), pixels outside ``shapes`` white; None for a baseline of one point.

    Kraken cuts baseline-segmented lines the same way; a bounding-box crop of a line sloping by
    a few degrees holds pieces of its neighbours and a tilted line: on the Hooker test split
    the best teacher reads the lines sloping 3 degrees or more at 23.4 % CER, the others at
    13.7 % (README, "Straightened lines"). Written with PIL's mesh transform rather than taken from
    Kraken, whose line extraction pulls in scikit-image and shapely for the same few steps.
    """
    base = baseline[np.r_[True, np.any(np.diff(baseline, axis=0) != 0, axis=1)]]
    if len(base) < 2:
        return None
    if base[-1, 0] < base[0, 0]:  # stored right to left
        base = base[::-1]
    first, last = base[1] - base[0], base[-1] - base[-2]
    base = base.astype(float).copy()
    base[0] -= pad * first / np.linalg.norm(first)
    base[-1] += pad * last / np.linalg.norm(last)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(base, axis=0), axis=1))])
    length = float(arc[-1])
    height = max(int(round(ascent + descent)), 2)
    width = max(int(round(length)), 2)

    def along(distance: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(distance, arc, base[:, 0]), np.interp(distance, arc, base[:, 1])], 1)

    # Knots every quarter of the line height; the direction at each is taken over one line
    # height of baseline, so that a kink in the polyline does not fold the strip.
    columns = np.unique(np.round(np.linspace(0, width, max(2, math.ceil(width / max(height / 4, 4)) + 1))))
    distance = columns * (length / width)
    points = along(distance)
    reach = height / 2
    tangent = along(np.clip(distance + reach, 0, length)) - along(np.clip(distance - reach, 0, length))
    norms = np.linalg.norm(tangent, axis=1, keepdims=True)
    tangent = np.where(norms > 0, tangent / np.maximum(norms, 1e-9), np.array([1.0, 0.0]))
    up = np.stack([tangent[:, 1], -tangent[:, 0]], 1)  # image y points down
    tops, bottoms = points + ascent * up, points - descent * up
    boxed = _masked_box(image, shapes, np.concatenate([tops, bottoms]))
    if boxed is None:
        return None
    region, x0, y0 = boxed
    offset = np.array([x0, y0], dtype=float)
    tops, bottoms = tops - offset, bottoms - offset
    mesh = [
        ((int(columns[k]), 0, int(columns[k + 1]), height),
         (*tops[k], *bottoms[k], *bottoms[k + 1], *tops[k + 1]))
        for k in range(len(columns) - 1)
    ]
    return region.transform((width, height), Image.Transform.MESH, mesh,
                            resample=Image.Resampling.BILINEAR, fillcolor=255)


# No scan is a billion pixels across: a coordinate beyond this (a 400-digit number in the XML,
# or a declared page size near zero) makes its polygon or baseline unusable, and keeps the
# arithmetic below (areas, bands, drawing) finite.
_MAX_COORDINATE = 1e9


def _on_page(points: np.ndarray | None, factor: np.ndarray | None) -> np.ndarray | None:
    """Points scaled by ``factor`` (page size / declared size), or None when a coordinate is
    not finite or beyond :data:`_MAX_COORDINATE`."""
    if points is None:
        return None
    if factor is not None:
        with np.errstate(over="ignore", invalid="ignore"):  # inf and nan are refused below
            points = points * factor
    return points if np.all(np.abs(points) <= _MAX_COORDINATE) else None


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1: grayscale scans barely compress further at higher levels, and encoding time
    # dominates cutting time (measured on the Hooker pages).
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_Crops = list[tuple[str, bytes]]  # (line id, PNG bytes) per cut line
_Skips = list[tuple[str, str]]  # (reason, file) per skipped line


def _cut_page(page: _Page, geometry: _Geometry) -> tuple[_Crops, _Skips]:
    """Cuts every line of one page, opening the page image once.

    Per line, in the frame where the line reads left to right (vertical lines are turned):
    the crop is the polygon's bounding box clipped to the page, pixels outside the polygon
    painted white, grayscale. Polygons are united with their baseline band (all of them, or
    with ``pad_to_band=False`` only thin ones, < ``thin_ratio`` x line height). Outliers
    (taller than ``outlier_ratio`` x line height, or reaching that far beyond the baseline's
    ends: stray vertices) and degenerate polygons are replaced by the band. Without a
    baseline, a degenerate polygon is skipped.

    Returns:
        ``(line id, PNG bytes)`` per cut line in reading order, and ``(reason, file)`` per
        skipped line.
    """
    where = str(page.image_path)
    try:
        # to_grayscale, not convert("L"), which turns 16-bit scans white
        gray = to_grayscale(read_image(page.image_path, where))
    except BadSampleError as err:
        return [], [(UNREADABLE_IMAGE, f"{where} ({err.__cause__})")]
    except ValueError as err:  # a mode to_grayscale cannot convert
        return [], [(UNREADABLE_IMAGE, f"{where} ({err})")]
    size = gray.size
    factor = None
    if page.declared_size is not None and page.declared_size != size:
        # Coordinates refer to the declared page size (exports made on a rescaled image).
        factor = np.array([size[0] / page.declared_size[0], size[1] / page.declared_size[1]])
    lines = [
        _Line(ln.line_id, ln.text, _on_page(ln.polygon, factor), _on_page(ln.baseline, factor))
        for ln in page.lines
    ]
    measured = [_measure(ln, geometry, size) for ln in lines]
    line_height, ascent, descent = _page_band(measured, geometry)
    turned = {0: gray}
    crops: _Crops = []
    skipped: _Skips = []
    for line, m in zip(lines, measured):
        label = f"{where} line {line.line_id}"
        band = None
        if m.baseline is not None and line_height is not None:
            band = _band_polygon(m.baseline, ascent, descent, _BAND_END_PAD * line_height)
        shapes: list[np.ndarray]
        keeps_polygon = m.polygon is not None  # False where the band replaces an outlier
        if m.polygon is None:
            shapes = [band] if band is not None else []
        elif band is not None and line_height is not None:
            overhang = max(
                float(m.baseline[:, 0].min() - m.polygon[:, 0].min()),
                float(m.polygon[:, 0].max() - m.baseline[:, 0].max()),
            )
            limit = geometry.outlier_ratio * line_height
            if m.height > limit or overhang > limit:
                shapes, keeps_polygon = [band], False
            elif geometry.pad_to_band or m.height < geometry.thin_ratio * line_height:
                shapes = [m.polygon, band]
            else:
                shapes = [m.polygon]
        else:
            shapes = [m.polygon]
        if not shapes:
            skipped.append((BAD_POLYGON, label))
            continue
        if m.turn not in turned:
            turned[m.turn] = gray.transpose(
                Image.Transpose.ROTATE_90 if m.turn == 1 else Image.Transpose.ROTATE_270
            )
        image = turned[m.turn]
        if geometry.rectify and band is not None:
            up, down = ascent, descent
            if keeps_polygon:
                # an ordinary polygon reaching further than the page's band keeps its ink
                up = max(up, m.local_ascent or 0.0)
                down = max(down, m.local_descent or 0.0)
            strip = _rectified(image, shapes, m.baseline, up, down, _BAND_END_PAD * (up + down))
            if strip is not None:
                crops.append((line.line_id, _encode_png(strip)))
                continue
        boxed = _masked_box(image, shapes, np.concatenate(shapes))
        if boxed is None:
            skipped.append((BAD_POLYGON, f"{label} (outside the page)"))
            continue
        crops.append((line.line_id, _encode_png(boxed[0])))
    return crops, skipped


_CACHE_VERSION = 2  # 2: 16-bit and transparent pages made grayscale like line images


def _cache_file(cache_dir: Path, page: _Page, geometry: _Geometry, kind: str) -> Path | None:
    """``<sha256>.npz`` keyed by the XML and image (path, size, mtime) and the crop options."""
    try:
        xml_stat, image_stat = page.xml_path.stat(), page.image_path.stat()
    except OSError:
        return None
    key = json.dumps(
        [
            _CACHE_VERSION, kind,
            str(page.xml_path.resolve()), xml_stat.st_size, xml_stat.st_mtime_ns,
            str(page.image_path.resolve()), image_stat.st_size, image_stat.st_mtime_ns,
            asdict(geometry),
            # The lines to cut depend on the split for IAM forms (line-id lists, skip_err).
            [line.line_id for line in page.lines],
        ]
    )
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.npz"


def _load_cache(path: Path) -> tuple[_Crops, _Skips] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, offsets, blob = data["ids"], data["offsets"], data["blob"]
            skipped = [tuple(s.split("\x00", 1)) for s in data["skipped"].tolist()]
    except (OSError, ValueError, KeyError, EOFError) as err:
        log.debug("ignoring unreadable cache file %s (%s)", path, err)
        return None
    crops = [
        (str(line_id), blob[offsets[i]: offsets[i + 1]].tobytes())
        for i, line_id in enumerate(ids.tolist())
    ]
    return crops, skipped  # type: ignore[return-value]


def _save_cache(path: Path, crops: _Crops, skipped: _Skips) -> None:
    # One .npz per page: line ids, the PNGs concatenated with their offsets, and the skip records
    # so that a cached page reports exactly what a fresh cut would. No pickled objects.
    sizes = [len(png) for _, png in crops]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    blob = np.frombuffer(b"".join(png for _, png in crops), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                ids=np.array([line_id for line_id, _ in crops], dtype=str),
                offsets=offsets,
                blob=blob,
                skipped=np.array([f"{r}\x00{f}" for r, f in skipped], dtype=str),
            )
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError as err:
        log.warning("cannot write line cache %s (%s)", path, err)
        tmp.unlink(missing_ok=True)


def _cut_pages(
    pages: Sequence[_Page],
    geometry: _Geometry,
    cache_dir: str | Path | None,
    workers: int,
    kind: str,
    report: SkipReport,
) -> list[LineSample]:
    """Cuts (or loads from the cache) the lines of every page; samples in page order."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
        cache.mkdir(parents=True, exist_ok=True)

    def one(page: _Page) -> tuple[_Crops, _Skips]:
        target = None if cache is None else _cache_file(cache, page, geometry, kind)
        if target is not None and target.is_file():
            hit = _load_cache(target)
            if hit is not None:
                return hit
        result = _cut_page(page, geometry)
        if target is not None:
            _save_cache(target, *result)
        return result

    if workers > 1 and len(pages) > 1:
        # Threads, so crops need no pickling. Pillow frees the GIL only in parts of the work
        # (JPEG decoding, deflate; not PNG row filtering), so this is off by default: on a
        # shared 2-core machine it did not speed up the Hooker train split (33 s serial, 38 s
        # with 2 threads).
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, pages))
    else:
        results = [one(page) for page in pages]
    samples = []
    for page, (crops, skipped) in zip(pages, results):
        for reason, file in skipped:
            report.add(reason, file)
        texts = {line.line_id: line.text for line in page.lines}
        for line_id, png in crops:
            line_key = f"{page.page_id}/{line_id}"
            samples.append(LineSample(line_key, texts[line_id], str(page.image_path), png))
    return samples
