"""Writing ``predict`` results as PAGE-XML, the format eScriptorium, Transkribus and kraken
exchange.

One file per input (:func:`write_result`):

- an image gets a new PAGE 2019 document: its lines (from the segmenter, or the whole image)
  as ``TextLine`` polygons in the image's own coordinates, with ``TextEquiv`` text and ``conf``;
- a PAGE-XML file gets a copy of itself in which every transcribed ``TextLine``'s ``TextEquiv``
  holds the prediction (and a ``TextRegion`` that had a ``TextEquiv`` gets its lines' texts);
  an ALTO file gets a copy in which each transcribed ``TextLine`` holds one ``String`` with
  ``CONTENT`` and ``WC``. Everything else in the document is kept as it was, and lines that
  could not be cut keep what they had.

Built with ElementTree (the standard library), as the reader parses: the documents are small
and the schema only needs element order kept, which the insertion below does.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from htr_lightning.data.readers.common import _local, _parse_xml
from htr_lightning.data.readers.pagexml import _text_lines
from htr_lightning.data.samples import SkipReport
from htr_lightning.inference.pages import LINE_KEYS
from htr_lightning.inference.segment import box_corners

log = logging.getLogger("htr_lightning.inference")

PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
CREATOR = "htr_lightning"

# What may follow TextEquiv inside a TextLine (PAGE schema order), so a new one goes before it.
_AFTER_TEXT_EQUIV = {"TextStyle", "UserDefined", "Labels"}


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _points(polygon) -> str:
    return " ".join(f"{int(x)},{int(y)}" for x, y in polygon)


def _text_equiv(tag_ns: str, text: str, confidence: float | None) -> ET.Element:
    equiv = ET.Element(f"{tag_ns}TextEquiv")
    if confidence is not None:
        equiv.set("conf", f"{min(max(confidence, 0.0), 1.0):.4f}")
    ET.SubElement(equiv, f"{tag_ns}Unicode").text = text
    return equiv


def page_for_image(result: dict, image_path: str | Path) -> ET.ElementTree:
    """A new PAGE 2019 document for one transcribed image.

    Args:
        result: A :class:`~htr_lightning.inference.pages.PageAssembler` result (its lines carry
            ``polygon`` in the image's coordinates).
        image_path: The image; its file name becomes ``imageFilename`` (PAGE tools look for the
            image beside the XML or one folder up) and its size ``imageWidth``/``imageHeight``.
    """
    image_path = Path(image_path)
    with Image.open(image_path) as image:  # reads the header only
        width, height = image.size
    ns = f"{{{PAGE_NS}}}"
    root = ET.Element(f"{ns}PcGts")
    meta = ET.SubElement(root, f"{ns}Metadata")
    ET.SubElement(meta, f"{ns}Creator").text = CREATOR
    ET.SubElement(meta, f"{ns}Created").text = _now()
    ET.SubElement(meta, f"{ns}LastChange").text = _now()
    page = ET.SubElement(root, f"{ns}Page", imageFilename=image_path.name,
                         imageWidth=str(width), imageHeight=str(height))
    lines = [line for line in result.get("lines", []) if line.get("polygon")]
    if lines:
        xs = [x for line in lines for x, _ in line["polygon"]]
        ys = [y for line in lines for _, y in line["polygon"]]
        region = ET.SubElement(page, f"{ns}TextRegion", id="r1")
        ET.SubElement(region, f"{ns}Coords",
                      points=_points(box_corners((min(xs), min(ys), max(xs), max(ys)))))
        for number, line in enumerate(lines, 1):
            element = ET.SubElement(region, f"{ns}TextLine", id=f"r1l{number}")
            ET.SubElement(element, f"{ns}Coords", points=_points(line["polygon"]))
            element.append(_text_equiv(ns, line["text"], line.get("confidence")))
        region.append(_text_equiv(ns, "\n".join(line["text"] for line in lines), None))
    return ET.ElementTree(root)


def _namespace_of(element: ET.Element) -> str:
    """``{uri}`` of the element's tag (what a new sibling or child needs), or ""."""
    return element.tag[: element.tag.index("}") + 1] if element.tag.startswith("{") else ""


def _set_page_line(element: ET.Element, text: str, confidence: float | None) -> None:
    ns = _namespace_of(element)
    children = list(element)
    old = [i for i, child in enumerate(children) if _local(child.tag) == "TextEquiv"]
    if old:
        position = old[0]
    else:
        position = next((i for i, child in enumerate(children)
                         if _local(child.tag) in _AFTER_TEXT_EQUIV), len(children))
    new = _text_equiv(ns, text, confidence)
    if old:  # keep the document's own indentation
        first = children[old[0]]
        new.text, new.tail = first.text, first.tail
        if len(first):
            new[0].tail = first[-1].tail
    elif position:
        new.tail = children[position - 1].tail
    for i in reversed(old):
        element.remove(children[i])
    element.insert(position, new)


def _set_alto_line(element: ET.Element, text: str, confidence: float | None) -> None:
    ns = _namespace_of(element)
    content = [child for child in element if _local(child.tag) in ("String", "SP", "HYP")]
    position = list(element).index(content[0]) if content else len(element)
    for child in content:
        element.remove(child)
    string = ET.Element(f"{ns}String", CONTENT=text)
    if confidence is not None:
        string.set("WC", f"{min(max(confidence, 0.0), 1.0):.4f}")
    element.insert(position, string)


def page_from_xml(result: dict, xml_path: str | Path) -> ET.ElementTree:
    """A copy of a PAGE-XML or ALTO document with the predicted text of each transcribed line.

    Args:
        result: A :class:`~htr_lightning.inference.pages.PageAssembler` result for that file
            (its lines carry ``line_id``).
        xml_path: The document the lines were cut from.

    Raises:
        ValueError: naming the file, when it cannot be parsed again.
    """
    xml_path = Path(xml_path)
    report = SkipReport(f"pagexml {xml_path.name}")
    document = _parse_xml(xml_path, report)
    if document is None:
        raise ValueError(f"{xml_path}: cannot read PAGE-XML again ({'; '.join(report.reasons())})")
    predicted = {line["line_id"]: line for line in result.get("lines", [])
                 if line.get("line_id") is not None}
    alto = _local(document.tag).lower() == "alto"
    # The same ids the reader gave the lines (missing ids numbered, repeats skipped).
    elements = {line_id: element for line_id, _, element
                in _text_lines(document, "ID" if alto else "id", xml_path, SkipReport("ids"))}
    updated = set()
    for line_id, line in predicted.items():
        element = elements.get(line_id)
        if element is None:
            log.warning("%s: line %s is no longer in the file; its text is not written",
                        xml_path, line_id)
            continue
        (_set_alto_line if alto else _set_page_line)(element, line["text"], line.get("confidence"))
        updated.add(element)
    if not alto:
        _update_regions(document, updated)
        for element in document.iter():
            if _local(element.tag) == "LastChange":
                element.text = _now()
    return ET.ElementTree(document)


def _update_regions(document: ET.Element, updated: set[ET.Element]) -> None:
    """A TextRegion that had a TextEquiv gets its lines' texts joined by newlines, so the
    region's text agrees with its lines."""
    for region in document.iter():
        if _local(region.tag) != "TextRegion":
            continue
        lines = [child for child in region if _local(child.tag) == "TextLine"]
        equivs = [child for child in region if _local(child.tag) == "TextEquiv"]
        if not equivs or not any(line in updated for line in lines):
            continue
        texts = []
        for line in lines:
            unicode = next((u for e in line if _local(e.tag) == "TextEquiv"
                            for u in e if _local(u.tag) == "Unicode"), None)
            texts.append((unicode.text or "") if unicode is not None else "")
        for child in equivs[1:]:
            region.remove(child)
        for child in list(equivs[0]):
            equivs[0].remove(child)
        equivs[0].attrib.pop("conf", None)
        ns = _namespace_of(region)
        ET.SubElement(equivs[0], f"{ns}Unicode").text = "\n".join(texts)


def write_transcription(transcription, source: str | Path, out_dir: str | Path) -> Path | None:
    """Writes what ``model.transcribe(source)`` returned as PAGE-XML, as ``predict
    --output.format pagexml`` would: ``write_transcription(model.transcribe("page.jpg"),
    "page.jpg", "page/")``.

    Args:
        transcription: A :class:`~htr_lightning.inference.pages.Transcription` of ``source``.
        source: The image or PAGE-XML/ALTO file that was transcribed (a path, not a PIL image).
        out_dir: Output folder.

    Returns:
        The file written (None for a transcription without lines, which is logged).
    """
    result = {"id": str(source), "text": transcription.text,
              "confidence": transcription.confidence,
              "lines": [{key: getattr(line, key) for key in LINE_KEYS}
                        for line in transcription.lines]}
    if not result["lines"]:
        result["error"] = "no text line found"
    return write_result(result, out_dir, set())


def write_result(result: dict, out_dir: str | Path, taken: set[Path]) -> Path | None:
    """Writes one input's PAGE-XML into ``out_dir`` as ``<input stem>.xml``.

    Never overwrites an input or a file written earlier in the same run (``taken``): the name
    then gets ``_2``, ``_3``, ... and a warning says so.

    Args:
        result: A :class:`~htr_lightning.inference.pages.PageAssembler` result.
        out_dir: Output folder (created).
        taken: Paths written so far in this run; the new one is added.

    Returns:
        The file written, or None for an input without lines (``error`` in the result), which
        is logged.
    """
    source = Path(result["id"])
    if result.get("error"):
        log.warning("%s: no PAGE-XML written (%s)", source, result["error"])
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    is_xml = source.suffix.lower() == ".xml"
    tree = page_from_xml(result, source) if is_xml else page_for_image(result, source)
    target = out_dir / f"{source.stem}.xml"
    number = 1
    while target.resolve() in taken or target.resolve() == source.resolve():
        number += 1
        target = out_dir / f"{source.stem}_{number}.xml"
    if number > 1:
        log.warning("%s: written as %s (%s.xml is its input or another input's output)",
                    source, target, source.stem)
    taken.add(target.resolve())
    root = tree.getroot()
    if root.tag.startswith("{"):
        # ElementTree writes a namespace as an ns0: prefix unless one is registered, and its
        # default_namespace option refuses unprefixed attributes (PAGE's id=... everywhere), so
        # the document's own namespace is registered as the default one, as it was written.
        ET.register_namespace("", root.tag[1: root.tag.index("}")])
    if not is_xml:  # a copy keeps its own layout
        ET.indent(tree)
    tree.write(str(target), encoding="utf-8", xml_declaration=True)
    return target
