"""One reader per dataset layout; each returns the text lines of one split.

Every reader has the signature
``read_xxx(root, split, split_spec=None, report=None, **options) -> list[LineSample]`` and is
registered in :data:`READERS` under the name used in configs (``folder``, ``pagexml``,
``bentham``, ``iam``).

Shared rules:

- ``split`` is ``"train"``, ``"val"`` or ``"test"``; ``split_spec`` overrides where the split is
  defined (a path relative to ``root``, or absolute).
- A wrong ``root`` or a missing split list / folder raises :class:`FileNotFoundError` at once,
  naming the missing path and what was expected there.
- A single bad line (missing image, empty transcription, ...) never raises: it is recorded in the
  :class:`~htr_lightning.data.samples.SkipReport` under a reason with the file name and skipped.
  When no report is passed, the reader makes one and logs it before returning.
- Transcriptions are decoded as UTF-8 (Latin-1 as a reported fallback) and normalised with
  :func:`htr_lightning.text.normalize_text` (NFC, whitespace runs collapsed, stripped).
- Ids are unique within a split and the result is sorted deterministically: by id for line
  datasets, by page id then reading order for page datasets (``pagexml``, IAM forms).

Lines cut out of page images (PAGE-XML, ALTO, IAM forms) are returned as grayscale PNG crops in
:attr:`LineSample.image_bytes`; their ``path`` is the page image, so messages name the file.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, ImageDraw

from htr_lightning.data.samples import LineSample, SkipReport
from htr_lightning.text.normalize import normalize_text

log = logging.getLogger("htr_lightning.data")

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

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


def _local(tag: object) -> str:
    """Tag name without namespace, so every PAGE / ALTO schema version matches."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


# Refused before parsing: ElementTree would expand internal entities (billion laughs) and the
# formats we read never need a DTD. A byte search is enough for UTF-8/Latin-1 documents; UTF-16
# ones are decoded first so the check cannot be side-stepped by the encoding.
_DTD_PATTERN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parse_xml(path: Path, report: SkipReport) -> ET.Element | None:
    """Parses one XML file, refusing DTDs and entity declarations; None (reported) on failure."""
    try:
        data = path.read_bytes()
    except OSError as err:
        report.add(BAD_XML, f"{path} ({err})")
        return None
    head = data[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and 0 in head[:2]):
        probe = data.decode("utf-16", errors="replace")
    else:
        probe = data.decode("latin-1")
    if _DTD_PATTERN.search(probe):
        report.add(DTD_REFUSED, str(path))
        return None
    try:
        return ET.fromstring(data)
    except ET.ParseError as err:
        report.add(BAD_XML, f"{path} ({err})")
        return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _points(text: str | None) -> np.ndarray | None:
    """``"x,y x,y ..."`` (PAGE) or ``"x y x y ..."`` (ALTO) -> array (N, 2), None if unusable."""
    if not text:
        return None
    values = [float(v) for v in _NUMBER.findall(text)]
    if len(values) < 2 or len(values) % 2:
        return None
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# folder: NAME.png + NAME.txt
# --------------------------------------------------------------------------------------------


def read_folder(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
) -> list[LineSample]:
    """Reads ``NAME.png`` + ``NAME.txt`` pairs (also .jpg/.jpeg/.tif/.tiff/.bmp images).

    By default the split is the folder ``root/<split>/``, searched recursively; the id of a line
    is its path relative to that folder without suffix (``sub/NAME``). ``split_spec`` may name
    another folder, or a file listing names (stems relative to ``root``, one per line, e.g.
    ``de/6_00_r1l43``), in which case the ids are the listed names.

    Args:
        root: Dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        split_spec: Folder or list file (relative to ``root`` or absolute) replacing
            ``root/<split>/``.
        report: Collects skipped lines: images without .txt ("no transcription"), .txt without
            image ("image missing"), empty transcriptions.

    Returns:
        Samples sorted by id.

    Raises:
        FileNotFoundError: if ``root`` or the split folder / list does not exist.
    """
    _check_split(split)
    root = _dataset_root(root, "a folder of NAME.png + NAME.txt pairs")
    location = root / split if split_spec is None else _spec_path(root, split_spec)
    with _ReportScope(report, f"folder {split}") as rep:
        if location.is_dir():
            samples = _folder_scan(location, rep)
        elif location.is_file():
            samples = _folder_list(root, location, rep)
        else:
            raise FileNotFoundError(
                f"split folder or list {location} not found; expected a folder of NAME.png + "
                f"NAME.txt pairs (default root/{split}/) or a file listing names"
            )
    return sorted(samples, key=lambda s: s.id)


def _folder_scan(folder: Path, report: SkipReport) -> list[LineSample]:
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    for path in sorted(folder.rglob("*"), key=lambda p: (rank.get(p.suffix.lower(), 99), str(p))):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts[key] = path
        elif suffix in rank:
            if key in images:
                report.add(DUPLICATE_ID, f"{path} (also {images[key].name})")
            else:
                images[key] = path
    for key in sorted(texts.keys() - images.keys()):
        report.add(NO_IMAGE, f"{texts[key]} (no image beside it)")
    samples = []
    for key, image in images.items():
        if key not in texts:
            report.add(NO_TEXT, str(image))
            continue
        text = _read_transcription(texts[key], report)
        if text is not None:
            samples.append(LineSample(key, text, str(image)))
    return samples


def _folder_list(root: Path, list_file: Path, report: SkipReport) -> list[LineSample]:
    samples = []
    for name in _read_list(list_file, "names of NAME.png + NAME.txt pairs, one per line"):
        stem = root / name
        if stem.suffix.lower() in IMAGE_SUFFIXES:  # listed with its suffix: "a/b.png"
            stem, name = stem.with_suffix(""), Path(name).with_suffix("").as_posix()
        image = _find_image(stem)
        if image is None:
            report.add(NO_IMAGE, f"{stem}.png (listed in {list_file.name})")
            continue
        text = _read_transcription(stem.with_name(stem.name + ".txt"), report)
        if text is not None:
            samples.append(LineSample(name, text, str(image)))
    return samples


# --------------------------------------------------------------------------------------------
# bentham: ICFHR 2014 BenthamDatasetR0-GT
# --------------------------------------------------------------------------------------------

_BENTHAM_LISTS = {"train": "TrainLines.lst", "val": "ValidationLines.lst", "test": "TestLines.lst"}


def read_bentham(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
) -> list[LineSample]:
    """Reads the ICFHR 2014 Bentham line dataset (``BenthamDatasetR0-GT``).

    Layout: ``Images/Lines/<id>.png``, ``Transcriptions/<id>.txt``,
    ``Partitions/{TrainLines,ValidationLines,TestLines}.lst`` (one line id per row). Point
    ``root`` at ``BenthamDatasetR0-GT/`` or at the folder that contains it.

    Args:
        root: ``BenthamDatasetR0-GT`` or its parent.
        split: ``"train"`` (TrainLines.lst), ``"val"`` (ValidationLines.lst) or ``"test"``
            (TestLines.lst).
        split_spec: Another list of line ids, relative to ``root`` (or to the
            ``BenthamDatasetR0-GT`` folder) or absolute.
        report: Collects skipped lines.

    Returns:
        Samples sorted by id.

    Raises:
        FileNotFoundError: if the layout or the split list is missing.
    """
    _check_split(split)
    given = _dataset_root(root, "the ICFHR 2014 BenthamDatasetR0-GT folder or its parent")
    base = given / "BenthamDatasetR0-GT" if (given / "BenthamDatasetR0-GT").is_dir() else given
    for sub in ("Images/Lines", "Transcriptions"):
        if not (base / sub).is_dir():
            raise FileNotFoundError(
                f"{base / sub} not found; expected the BenthamDatasetR0-GT layout "
                "(Images/Lines/<id>.png, Transcriptions/<id>.txt, Partitions/*.lst)"
            )
    if split_spec is None:
        list_file = base / "Partitions" / _BENTHAM_LISTS[split]
    else:
        list_file = _spec_path(given, split_spec)
        if not list_file.exists() and base != given:
            list_file = _spec_path(base, split_spec)
    ids = _read_list(list_file, f"Bentham line ids of the {split} split, one per line")
    samples = []
    with _ReportScope(report, f"bentham {split}") as rep:
        for line_id in ids:
            image = base / "Images" / "Lines" / f"{line_id}.png"
            if not image.is_file():
                rep.add(NO_IMAGE, str(image))
                continue
            text = _read_transcription(base / "Transcriptions" / f"{line_id}.txt", rep)
            if text is not None:
                samples.append(LineSample(line_id, text, str(image)))
    return sorted(samples, key=lambda s: s.id)


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
    return m


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
        with Image.open(page.image_path) as opened:
            gray = opened.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return [], [(UNREADABLE_IMAGE, f"{where} ({err})")]
    size = gray.size
    lines = page.lines
    if page.declared_size is not None and page.declared_size != size:
        # Coordinates refer to the declared page size (exports made on a rescaled image).
        factor = np.array([size[0] / page.declared_size[0], size[1] / page.declared_size[1]])
        lines = [
            _Line(
                ln.line_id, ln.text,
                None if ln.polygon is None else ln.polygon * factor,
                None if ln.baseline is None else ln.baseline * factor,
            )
            for ln in lines
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
        if m.polygon is None:
            shapes = [band] if band is not None else []
        elif band is not None and line_height is not None:
            overhang = max(
                float(m.baseline[:, 0].min() - m.polygon[:, 0].min()),
                float(m.polygon[:, 0].max() - m.baseline[:, 0].max()),
            )
            limit = geometry.outlier_ratio * line_height
            if m.height > limit or overhang > limit:
                shapes = [band]
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
        corners = np.concatenate(shapes)
        # PAGE coordinates are pixel indices: the box includes its last row and column.
        x0 = max(math.floor(float(corners[:, 0].min())), 0)
        y0 = max(math.floor(float(corners[:, 1].min())), 0)
        x1 = min(math.floor(float(corners[:, 0].max())) + 1, image.width)
        y1 = min(math.floor(float(corners[:, 1].max())) + 1, image.height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            skipped.append((BAD_POLYGON, f"{label} (outside the page)"))
            continue
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(mask)
        for shape in shapes:
            draw.polygon([(float(x) - x0, float(y) - y0) for x, y in shape], fill=255)
        crop = image.crop((x0, y0, x1, y1))
        white = Image.new("L", crop.size, 255)
        crops.append((line.line_id, _encode_png(Image.composite(crop, white, mask))))
    return crops, skipped


_CACHE_VERSION = 1


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


# --------------------------------------------------------------------------------------------
# pagexml: PAGE-XML (2010 to 2019 schemas) and ALTO
# --------------------------------------------------------------------------------------------


def _resolve_page_image(
    xml_path: Path, name: str | None, root: Path, allow_outside_root: bool, report: SkipReport
) -> Path | None:
    """The page image named by the XML, or None (reported).

    Looked up relative to the XML's folder, then its parent (Transkribus exports keep the XML in
    ``page/`` beside the images), then by the same stem with any image suffix, then by the XML's
    own stem. A name that resolves outside ``root`` is refused (path traversal) unless
    ``allow_outside_root``.
    """
    folders = [xml_path.parent]
    if xml_path.parent.resolve() != root.resolve():
        folders.append(xml_path.parent.parent)
    inside_root = root.resolve()

    def allowed(path: Path) -> bool:
        return allow_outside_root or path.resolve().is_relative_to(inside_root)

    stems: list[Path] = []
    if name:
        if not allowed(xml_path.parent / name):
            report.add(OUTSIDE_ROOT, f"{xml_path}: imageFilename {name!r}")
            return None
        for folder in folders:
            candidate = folder / name
            if candidate.is_file() and allowed(candidate):
                return candidate
        # Names written on another machine ("C:\\scans\\x.jpg"): keep only the file name.
        stems += [folder / Path(PureWindowsPath(name).name).stem for folder in folders]
    stems += [folder / xml_path.stem for folder in folders]
    for stem in stems:
        found = _find_image(stem)
        if found is not None and allowed(found):
            return found
    report.add(NO_IMAGE, f"{xml_path}: imageFilename {name!r} not found")
    return None


def _page_text(line: ET.Element) -> str | None:
    """The line's own TextEquiv/Unicode (lowest ``index`` first); None if the line has none."""
    equivs = [child for child in line if _local(child.tag) == "TextEquiv"]

    def index(equiv: ET.Element) -> int:
        try:
            return int(equiv.get("index", "0"))
        except ValueError:
            return 0

    for equiv in sorted(equivs, key=index):
        for child in equiv:
            if _local(child.tag) == "Unicode":
                return child.text or ""
    return None


def _page_words_text(line: ET.Element) -> str:
    words = []
    for word in line:
        if _local(word.tag) == "Word":
            text = _page_text(word)
            if text:
                words.append(text)
    return " ".join(words)


def _page_coords(element: ET.Element, tag: str) -> np.ndarray | None:
    for child in element:
        if _local(child.tag) == tag:
            if child.get("points") is not None:
                return _points(child.get("points"))
            # PAGE 2010 writes <Point x= y=/> children instead of a points attribute.
            pairs = [f"{p.get('x')},{p.get('y')}" for p in child if _local(p.tag) == "Point"]
            return _points(" ".join(pairs))
    return None


def _parse_page(
    xml_path: Path, page_id: str, root: Path, allow_outside_root: bool, report: SkipReport
) -> _Page | None:
    document = _parse_xml(xml_path, report)
    if document is None:
        return None
    if _local(document.tag).lower() == "alto":
        return _parse_alto(document, xml_path, page_id, root, allow_outside_root, report)
    page = next((e for e in document.iter() if _local(e.tag) == "Page"), None)
    if page is None:
        report.add(UNSUPPORTED, f"{xml_path} (neither PAGE-XML nor ALTO)")
        return None
    name = page.get("imageFilename")
    image = _resolve_page_image(xml_path, name, root, allow_outside_root, report)
    if image is None:
        return None
    lines: list[_Line] = []
    seen: set[str] = set()
    for number, element in enumerate(e for e in page.iter() if _local(e.tag) == "TextLine"):
        line_id = element.get("id") or f"line{number}"
        where = f"{xml_path} line {line_id}"
        if line_id in seen:
            report.add(DUPLICATE_ID, where)
            continue
        seen.add(line_id)
        own = _page_text(element)
        text = _clean(own if own is not None else _page_words_text(element), where, report)
        if text is not None:
            polygon = _page_coords(element, "Coords")
            lines.append(_Line(line_id, text, polygon, _page_coords(element, "Baseline")))
    declared = _declared_size(page.get("imageWidth"), page.get("imageHeight"))
    return _Page(page_id, xml_path, image, lines, declared)


def _declared_size(width: str | None, height: str | None) -> tuple[float, float] | None:
    try:
        size = (float(width), float(height))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return size if size[0] > 0 and size[1] > 0 else None


def _parse_alto(
    document: ET.Element,
    xml_path: Path,
    page_id: str,
    root: Path,
    allow_outside_root: bool,
    report: SkipReport,
) -> _Page | None:
    unit = next((e.text for e in document.iter() if _local(e.tag) == "MeasurementUnit"), None)
    if unit and unit.strip() != "pixel":
        report.add(UNSUPPORTED, f"{xml_path} (ALTO MeasurementUnit {unit.strip()!r}, only 'pixel')")
        return None
    name = next((e.text for e in document.iter() if _local(e.tag) == "fileName"), None)
    name = (name or "").strip() or None
    image = _resolve_page_image(xml_path, name, root, allow_outside_root, report)
    if image is None:
        return None
    page = next((e for e in document.iter() if _local(e.tag) == "Page"), None)
    declared = None if page is None else _declared_size(page.get("WIDTH"), page.get("HEIGHT"))
    lines: list[_Line] = []
    seen: set[str] = set()
    for number, element in enumerate(e for e in document.iter() if _local(e.tag) == "TextLine"):
        line_id = element.get("ID") or f"line{number}"
        where = f"{xml_path} line {line_id}"
        if line_id in seen:
            report.add(DUPLICATE_ID, where)
            continue
        seen.add(line_id)
        parts: list[str] = []
        for child in element:
            if _local(child.tag) == "String":
                parts.append(child.get("CONTENT", ""))
            elif _local(child.tag) == "HYP" and parts:
                parts[-1] += child.get("CONTENT", "")
        text = _clean(" ".join(parts), where, report)
        if text is None:
            continue
        polygon = None
        for shape in (e for e in element if _local(e.tag) == "Shape"):
            for outline in (p for p in shape if _local(p.tag) == "Polygon"):
                polygon = _points(outline.get("POINTS"))
        box = [element.get(k) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
        baseline = _points(element.get("BASELINE"))
        if all(box):
            # The box spans WIDTH x HEIGHT pixels; polygons here use inclusive pixel corners.
            x, y, w, h = (float(v) for v in box)  # type: ignore[arg-type]
            right, bottom = x + max(w - 1, 0), y + max(h - 1, 0)
            if polygon is None:
                polygon = np.array([[x, y], [right, y], [right, bottom], [x, bottom]])
            levels = _NUMBER.findall(element.get("BASELINE", ""))
            if baseline is None and len(levels) == 1:
                # ALTO up to 4.1: BASELINE is one number, the y of a horizontal baseline.
                baseline = np.array([[x, float(levels[0])], [right, float(levels[0])]])
        lines.append(_Line(line_id, text, polygon, baseline))
    return _Page(page_id, xml_path, image, lines, declared)


def read_pagexml(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
    cache_dir: str | None = None,
    thin_ratio: float = 0.5,
    outlier_ratio: float = 4.0,
    ascender: float | None = None,
    descender: float | None = None,
    rotate_vertical: bool = True,
    pad_to_band: bool = True,
    workers: int = 1,
    allow_outside_root: bool = False,
) -> list[LineSample]:
    """Cuts text lines out of page images described by PAGE-XML (or ALTO) files.

    The split list ``root/<split>.lst`` holds page ids, one per line (ids may contain spaces
    and parentheses). Each id's XML is ``<id>.xml`` in ``root/pages/``, else ``root/page/``, else
    ``root/``. The page image comes from ``Page/@imageFilename`` relative to the XML's folder
    (then its parent, then the same stem with any image suffix); a name resolving outside
    ``root`` is refused. XML with a DOCTYPE or ENTITY declaration is refused unparsed.
    Any PAGE schema (2010 to 2019) and ALTO (``String@CONTENT``, ``Shape/Polygon`` or
    HPOS/VPOS/WIDTH/HEIGHT, ``BASELINE``) are read, matching local tag names.

    A line's text is its own ``TextEquiv/Unicode`` (not the words'); only a line with no
    TextEquiv at all falls back to its ``Word`` texts. The line image is the ``Coords`` polygon's
    bounding box clipped to the page, outside pixels white, grayscale (mode ``L``). Where a
    ``Baseline`` exists, the crop covers at least the page's band around it (from baseline -
    ascent to baseline + descent, the medians of the page's ordinary polygons): many polygons
    are tighter than the ink (~6 % of the Hooker lines hug the baseline at ~15-50 px, and many
    more cut ascenders), so the polygon and the band are united. Outlier polygons (stray
    vertices, page-tall or degenerate shapes) are replaced by the band. Vertical lines
    (baseline running up or down the page) are turned to read left to right.

    Args:
        root: Dataset folder (e.g. ``../shared/data/hooker``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        split_spec: Page-id list replacing ``root/<split>.lst``.
        report: Collects skipped lines and pages.
        cache_dir: Folder for cut lines, one .npz per page keyed by the XML and image (path,
            size, mtime) and the crop options; a second start reads crops instead of cutting.
        thin_ratio: Polygons lower than this x the page's median height are not used to measure
            the band (and are the only ones widened to it when ``pad_to_band`` is False).
        outlier_ratio: A polygon taller than this x the line height, or reaching this far
            beyond the baseline's ends, is replaced by the baseline band.
        ascender: Band height above the baseline in pixels (default: measured per page).
        descender: Band depth below the baseline in pixels (default: measured per page).
        rotate_vertical: Turn lines whose baseline runs vertically so they read left to right.
        pad_to_band: Unite every polygon with its baseline band (True), or only thin ones.
        workers: Threads cutting pages in parallel (1: serial, measured as fast on 2 cores).
        allow_outside_root: Accept images resolving outside ``root`` (symlink farms you trust).

    Returns:
        Samples with ids ``<page id>/<TextLine id>``, PNG crops in ``image_bytes`` and the page
        image as ``path``; sorted by page id, lines in document (reading) order.

    Raises:
        FileNotFoundError: if ``root`` or the split list does not exist.
    """
    _check_split(split)
    root = _dataset_root(root, "page images with PAGE-XML files and <split>.lst page lists")
    list_file = root / f"{split}.lst" if split_spec is None else _spec_path(root, split_spec)
    expected = f"page ids of the {split} split, one per line (<id>.xml in pages/, page/ or root)"
    page_ids = _read_list(list_file, expected)
    geometry = _Geometry(
        thin_ratio, outlier_ratio, ascender, descender, rotate_vertical, pad_to_band
    )
    with _ReportScope(report, f"pagexml {split}") as rep:
        pages = []
        folders = (root / "pages", root / "page", root)
        for page_id in sorted(page_ids):
            candidates = [folder / f"{page_id}.xml" for folder in folders]
            xml_path = next((c for c in candidates if c.is_file()), None)
            if xml_path is None:
                where = f"{candidates[0]} (nor in page/ or the root; in {list_file.name})"
                rep.add(NOT_LISTED, where)
                continue
            page = _parse_page(xml_path, page_id, root, allow_outside_root, rep)
            if page is not None and page.lines:
                pages.append(page)
        return _cut_pages(pages, geometry, cache_dir, workers, "pagexml", rep)


# --------------------------------------------------------------------------------------------
# iam: IAM Handwriting Database lines (or forms + XML)
# --------------------------------------------------------------------------------------------

# IAM writes a few characters as HTML entities in its ASCII and XML files. Only these are
# replaced: html.unescape would also turn "&copy" without a semicolon into a symbol.
_IAM_ENTITIES = {"&quot;": '"', "&amp;": "&", "&lt;": "<", "&gt;": ">", "&apos;": "'"}
_IAM_ENTITY = re.compile("|".join(map(re.escape, _IAM_ENTITIES)))


def _iam_unescape(text: str) -> str:
    return _IAM_ENTITY.sub(lambda m: _IAM_ENTITIES[m.group(0)], text)


def _form_of(line_id: str) -> str:
    return "-".join(line_id.split("-")[:2])


def read_iam(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
    skip_err: bool = False,
    source: str = "lines",
    cache_dir: str | None = None,
    workers: int = 1,
) -> list[LineSample]:
    """Reads the IAM Handwriting Database text lines.

    Point ``root`` at the folder where the IAM archives were unpacked:
    ``lines/<a01>/<a01-000u>/<a01-000u-00>.png`` (lines.tgz) and ``ascii/lines.txt``
    (ascii.tgz), plus split lists in ``root/splits/{train,val,test}.txt``. A list entry is a
    form id (``a01-000u``, as in the Aachen/RWTH lists) or a line id (``a01-000u-00``, as in the
    official task lists); a line belongs to the split if either its id or its form is listed.
    In ``lines.txt`` (``id ok|err graylevel ncomp x y w h word|word|...``, ``#`` comments) the
    text is the ninth field onward with ``|`` read as a space, so punctuation stays separated by
    spaces as IAM tokenised it ("Mr. Gaitskell , who").

    With ``source="forms"`` the lines are cut from ``forms/<form>.png`` (formsA-D/E-H/I-Z.tgz)
    by the union box of each XML ``line``'s ``cmp`` components in ``xml/<form>.xml``
    (xml.tgz); the text is the ``line@text`` attribute (untokenised).

    Args:
        root: IAM folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        split_spec: List file replacing ``root/splits/<split>.txt``.
        report: Collects skipped lines.
        skip_err: Drop lines whose segmentation is marked ``err``.
        source: ``"lines"`` (line images) or ``"forms"`` (cut from form images via the XML).
        cache_dir: With ``source="forms"``: folder for cut lines (see :func:`read_pagexml`).
        workers: With ``source="forms"``: threads cutting forms in parallel.

    Returns:
        Samples sorted by line id.

    Raises:
        FileNotFoundError: if ``root``, ``ascii/lines.txt`` (or ``xml/``) or the split list is
            missing.
        ValueError: for an unknown ``source``.
    """
    _check_split(split)
    if source not in ("lines", "forms"):
        raise ValueError(f"source must be 'lines' or 'forms', got {source!r}")
    root = _dataset_root(root, "the IAM folder with lines/ and ascii/lines.txt (or forms/, xml/)")
    if split_spec is None:
        list_file = root / "splits" / f"{split}.txt"
    else:
        list_file = _spec_path(root, split_spec)
    entries = set(_read_list(list_file, f"IAM form or line ids of the {split} split, one per line"))
    with _ReportScope(report, f"iam {split}") as rep:
        if source == "lines":
            samples = _iam_lines(root, entries, skip_err, rep)
        else:
            samples = _iam_forms(root, entries, skip_err, cache_dir, workers, rep)
    return sorted(samples, key=lambda s: s.id)


def _iam_lines(
    root: Path, entries: set[str], skip_err: bool, report: SkipReport
) -> list[LineSample]:
    ascii_file = root / "ascii" / "lines.txt"
    if not ascii_file.is_file():
        raise FileNotFoundError(
            f"{ascii_file} not found; expected IAM's ascii/lines.txt (from ascii.tgz)"
        )
    samples = []
    found: set[str] = set()
    raw = ascii_file.read_bytes()
    for row in _decode_text(raw, str(ascii_file), report).splitlines():
        if not row.strip() or row.startswith("#"):
            continue
        fields = row.split(" ")
        line_id = fields[0]
        if line_id not in entries and _form_of(line_id) not in entries:
            continue
        where = f"{ascii_file}: {line_id}"
        if line_id in found:
            report.add(DUPLICATE_ID, where)
            continue
        found.add(line_id)
        if len(fields) < 9:
            report.add(EMPTY_TEXT, where)
            continue
        if skip_err and fields[1] != "ok":
            report.add(SEGMENTATION_ERR, where)
            continue
        text = _clean(_iam_unescape(" ".join(fields[8:]).replace("|", " ")), where, report)
        if text is None:
            continue
        image = root / "lines" / line_id.split("-")[0] / _form_of(line_id) / f"{line_id}.png"
        if not image.is_file():
            report.add(NO_IMAGE, str(image))
            continue
        samples.append(LineSample(line_id, text, str(image)))
    for entry in sorted(e for e in entries if e.count("-") >= 2 and e not in found):
        report.add(NOT_LISTED, f"{entry} (not in {ascii_file.name})")
    return samples


def _iam_forms(
    root: Path,
    entries: set[str],
    skip_err: bool,
    cache_dir: str | None,
    workers: int,
    report: SkipReport,
) -> list[LineSample]:
    xml_dir = root / "xml"
    if not xml_dir.is_dir():
        raise FileNotFoundError(
            f"{xml_dir} not found; expected IAM's xml/<form>.xml files (from xml.tgz)"
        )
    pages = []
    for form in sorted({_form_of(entry) for entry in entries}):
        xml_path = xml_dir / f"{form}.xml"
        if not xml_path.is_file():
            report.add(NOT_LISTED, f"{xml_path} (form listed in the split)")
            continue
        document = _parse_xml(xml_path, report)
        if document is None:
            continue
        image = _find_image(root / "forms" / form)
        if image is None:
            report.add(NO_IMAGE, f"{root / 'forms' / form}.png")
            continue
        lines = []
        for element in (e for e in document.iter() if _local(e.tag) == "line"):
            line_id = element.get("id", "")
            if line_id not in entries and form not in entries:
                continue
            where = f"{xml_path} line {line_id}"
            if skip_err and element.get("segmentation", "ok") != "ok":
                report.add(SEGMENTATION_ERR, where)
                continue
            text = _clean(_iam_unescape(element.get("text", "")), where, report)
            if text is None:
                continue
            boxes = [
                [float(c.get(k, "nan")) for k in ("x", "y", "width", "height")]
                for c in element.iter() if _local(c.tag) == "cmp"
            ]
            boxes = [b for b in boxes if all(math.isfinite(v) for v in b)]
            if not boxes:
                report.add(BAD_POLYGON, f"{where} (no cmp components)")
                continue
            arr = np.asarray(boxes)
            # IAM boxes are (x, y, width, height); the union's last pixel is x + width - 1.
            x0, y0 = arr[:, 0].min(), arr[:, 1].min()
            x1, y1 = (arr[:, 0] + arr[:, 2]).max() - 1, (arr[:, 1] + arr[:, 3]).max() - 1
            polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            lines.append(_Line(line_id, text, polygon, None))
        if lines:
            pages.append(_Page(form, xml_path, image, lines))
    geometry = _Geometry(rotate_vertical=False)
    samples = _cut_pages(pages, geometry, cache_dir, workers, "iam-forms", report)
    # Line ids of IAM already name their form; drop the "<form>/" prefix the page cutter adds.
    return [LineSample(s.id.split("/", 1)[1], s.text, s.path, s.image_bytes) for s in samples]


Reader = Callable[..., list[LineSample]]

READERS: dict[str, Reader] = {
    "folder": read_folder,
    "pagexml": read_pagexml,
    "bentham": read_bentham,
    "iam": read_iam,
}
"""Reader functions by the dataset name used in configs."""

__all__ = [
    "IMAGE_SUFFIXES",
    "READERS",
    "SPLITS",
    "read_bentham",
    "read_folder",
    "read_iam",
    "read_pagexml",
]
