"""Reader for page images described by PAGE-XML (2010 to 2019 schemas) or ALTO files.

Layout: ``root/<split>.lst`` page ids; ``<id>.xml`` in ``root/pages/``, ``root/page/`` or
``root/``; page images named by the XML beside it (or in its parent folder). Lines are cut
out of the page images by :func:`~htr_lightning.data.readers.common._cut_pages`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import numpy as np

from htr_lightning.data.readers.common import (
    DUPLICATE_ID,
    NO_IMAGE,
    NOT_LISTED,
    OUTSIDE_ROOT,
    UNSUPPORTED,
    _check_split,
    _clean,
    _cut_pages,
    _dataset_root,
    _find_image,
    _Geometry,
    _Line,
    _local,
    _number,
    _Page,
    _parse_xml,
    _read_list,
    _ReportScope,
    _spec_path,
)
from htr_lightning.data.samples import LineSample, SkipReport
from htr_lightning.text import normalize_text


# --------------------------------------------------------------------------------------------
# pagexml: PAGE-XML (2010 to 2019 schemas) and ALTO
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _points(text: str | None) -> np.ndarray | None:
    """``"x,y x,y ..."`` (PAGE) or ``"x y x y ..."`` (ALTO) -> array (N, 2), None if unusable."""
    if not text:
        return None
    values = [float(v) for v in _NUMBER.findall(text)]
    if len(values) < 2 or len(values) % 2:
        return None
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


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


def _text_lines(
    tree: ET.Element, id_attr: str, xml_path: Path, report: SkipReport
) -> Iterator[tuple[str, str, ET.Element]]:
    """Each ``TextLine`` under ``tree`` in document order as (id, where, element); a line whose
    id repeats an earlier one is reported and skipped (PAGE says ``id``, ALTO ``ID``)."""
    seen: set[str] = set()
    for number, element in enumerate(e for e in tree.iter() if _local(e.tag) == "TextLine"):
        line_id = element.get(id_attr) or f"line{number}"
        where = f"{xml_path} line {line_id}"
        if line_id in seen:
            report.add(DUPLICATE_ID, where)
            continue
        seen.add(line_id)
        yield line_id, where, element


def _line_text(text: str | None, where: str, report: SkipReport, require_text: bool) -> str | None:
    return _clean(text, where, report) if require_text else normalize_text(text or "")


def _parse_page(
    xml_path: Path, page_id: str, root: Path, allow_outside_root: bool, report: SkipReport,
    require_text: bool = True,
) -> _Page | None:
    document = _parse_xml(xml_path, report)
    if document is None:
        return None
    if _local(document.tag).lower() == "alto":
        return _parse_alto(document, xml_path, page_id, root, allow_outside_root, report,
                           require_text)
    page = next((e for e in document.iter() if _local(e.tag) == "Page"), None)
    if page is None:
        report.add(UNSUPPORTED, f"{xml_path} (neither PAGE-XML nor ALTO)")
        return None
    name = page.get("imageFilename")
    image = _resolve_page_image(xml_path, name, root, allow_outside_root, report)
    if image is None:
        return None
    lines: list[_Line] = []
    for line_id, where, element in _text_lines(page, "id", xml_path, report):
        own = _page_text(element)
        text = _line_text(own if own is not None else _page_words_text(element), where, report,
                          require_text)
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
    require_text: bool = True,
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
    for line_id, where, element in _text_lines(document, "ID", xml_path, report):
        parts: list[str] = []
        for child in element:
            if _local(child.tag) == "String":
                parts.append(child.get("CONTENT", ""))
            elif _local(child.tag) == "HYP" and parts:
                parts[-1] += child.get("CONTENT", "")
        text = _line_text(" ".join(parts), where, report, require_text)
        if text is None:
            continue
        polygon = None
        for shape in (e for e in element if _local(e.tag) == "Shape"):
            for outline in (p for p in shape if _local(p.tag) == "Polygon"):
                polygon = _points(outline.get("POINTS"))
        box = [_number(element.get(k)) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
        baseline = _points(element.get("BASELINE"))
        if all(v is not None for v in box):
            # The box spans WIDTH x HEIGHT pixels; polygons here use inclusive pixel corners.
            x, y, w, h = box  # type: ignore[misc]
            right, bottom = x + max(w - 1, 0), y + max(h - 1, 0)
            if polygon is None:
                polygon = np.array([[x, y], [right, y], [right, bottom], [x, bottom]])
            levels = _NUMBER.findall(element.get("BASELINE", ""))
            if baseline is None and len(levels) == 1:
                # ALTO up to 4.1: BASELINE is one number, the y of a horizontal baseline.
                baseline = np.array([[x, float(levels[0])], [right, float(levels[0])]])
        lines.append(_Line(line_id, text, polygon, baseline))
    return _Page(page_id, xml_path, image, lines, declared)


def page_folders(root: Path) -> tuple[Path, Path, Path]:
    """Where a page id's XML is looked for, first match wins: ``pages/``, ``page/``, the root."""
    return (root / "pages", root / "page", root)


def find_page_xml(root: Path, page_id: str) -> Path | None:
    """``<page_id>.xml`` in the first of :func:`page_folders` that has it, else None."""
    candidates = (folder / f"{page_id}.xml" for folder in page_folders(root))
    return next((path for path in candidates if path.is_file()), None)


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
    rectify: bool = False,
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
        rectify: Straighten each line along its baseline (as Kraken cuts lines) instead of
            cropping its bounding box: the band is then measured across the line, and the
            crop is a strip whose rows run parallel to the baseline. Lines without a usable
            baseline are cropped as before.
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
    expected = (f"page ids of the {split} split, one per line (<id>.xml in pages/, page/ or "
                "root); `python -m htr_lightning.data.split --dataset pagexml --root ...` "
                "writes the three lists for a collection that has none")
    page_ids = _read_list(list_file, expected)
    geometry = _Geometry(
        thin_ratio, outlier_ratio, ascender, descender, rotate_vertical, pad_to_band, rectify
    )
    with _ReportScope(report, f"pagexml {split}") as rep:
        pages = []
        for page_id in sorted(page_ids):
            xml_path = find_page_xml(root, page_id)
            if xml_path is None:
                expected_xml = page_folders(root)[0] / f"{page_id}.xml"
                where = f"{expected_xml} (nor in page/ or the root; in {list_file.name})"
                rep.add(NOT_LISTED, where)
                continue
            page = _parse_page(xml_path, page_id, root, allow_outside_root, rep)
            if page is not None and page.lines:
                pages.append(page)
        return _cut_pages(pages, geometry, cache_dir, workers, "pagexml", rep)


def read_page_file(xml_path: str | Path, report: SkipReport | None = None,
                   allow_outside_root: bool = False, rectify: bool = False) -> list[LineSample]:
    """The text lines of one PAGE-XML or ALTO file, cut as :func:`read_pagexml` cuts them, for
    transcribing a page along its own line polygons. Lines without a transcription are kept
    (with text ""); the page image may sit beside the XML or one folder up.

    ``rectify`` straightens each line along its baseline, as :func:`read_pagexml` does: a
    model trained on straightened lines wants its pages cut the same way.

    Returns:
        Samples with ids ``<xml stem>/<TextLine id>``, in document (reading) order.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise FileNotFoundError(f"{xml_path}: no such PAGE-XML file")
    with _ReportScope(report, f"pagexml {xml_path.name}") as rep:
        page = _parse_page(xml_path, xml_path.stem, xml_path.parent.parent, allow_outside_root,
                           rep, require_text=False)
        if page is None or not page.lines:
            return []
        return _cut_pages([page], _Geometry(rectify=rectify), None, 1,
                          "pagexml", rep)
