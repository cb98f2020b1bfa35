"""Reader for the IAM Handwriting Database text lines (line images, or forms cut via the XML).

Layout: ``lines/<a01>/<a01-000u>/<a01-000u-00>.png`` with ``ascii/lines.txt``, or
``forms/<form>.png`` with ``xml/<form>.xml``; split lists in ``splits/{train,val,test}.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from htr_lightning.data.readers.common import (
    BAD_POLYGON,
    DUPLICATE_ID,
    EMPTY_TEXT,
    NO_IMAGE,
    NOT_LISTED,
    SEGMENTATION_ERR,
    _check_split,
    _clean,
    _cut_pages,
    _dataset_root,
    _decode_text,
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
                [_number(c.get(k)) for k in ("x", "y", "width", "height")]
                for c in element.iter() if _local(c.tag) == "cmp"
            ]
            boxes = [b for b in boxes if all(v is not None for v in b)]
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
