"""Builders of tiny datasets in the exact published layouts, for reader and datamodule tests.

Each ``make_*`` writes into a given folder and returns what a test needs to know about it.
Images are drawn with PIL: white (or grey "paper") with black boxes as ink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, ImageDraw

PAGE_2013 = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15"
PAGE_2019 = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
ALTO_4 = "http://www.loc.gov/standards/alto/ns-v4#"

Box = tuple[int, int, int, int]


def line_image(path: Path, size: tuple[int, int] = (120, 32), mode: str = "L") -> Path:
    """A white line image with one black box of "ink"."""
    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).rectangle((5, 5, size[0] - 6, size[1] - 6), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ---------------------------------------------------------------------------------- folder


def make_folder(root: Path) -> Path:
    """``root/{train,val}/NAME.png + NAME.txt`` with the usual defects in train.

    train: ``a`` (ok, messy whitespace), ``sub/b`` (.jpg, ok), ``c`` (no .txt), ``d`` (.txt
    only), ``e`` (empty text), ``f`` (Latin-1 text "café"), ``g`` (NFD text "né" -> NFC).
    val: ``x``. Also ``lists/some.txt`` naming ``train/a`` and ``val/x``.
    """
    train, val = root / "train", root / "val"
    line_image(train / "a.png")
    (train / "a.txt").write_text("  Hello \t  world \n\n", encoding="utf-8")
    line_image(train / "sub" / "b.jpg", mode="RGB")
    (train / "sub" / "b.txt").write_text("second line\n", encoding="utf-8")
    line_image(train / "c.png")
    (train / "d.txt").write_text("orphan text\n", encoding="utf-8")
    line_image(train / "e.png")
    (train / "e.txt").write_text(" \n\t\n", encoding="utf-8")
    line_image(train / "f.tif")
    (train / "f.txt").write_bytes("café au lait".encode("latin-1"))
    line_image(train / "g.png")
    (train / "g.txt").write_text("ne\u0301", encoding="utf-8")
    line_image(val / "x.png")
    (val / "x.txt").write_text("validation\n", encoding="utf-8")
    (root / "lists").mkdir()
    (root / "lists" / "some.txt").write_text("train/a\nval/x\n\ntrain/missing\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------- bentham


BENTHAM_TRAIN = ["002_080_001_01_01", "002_080_001_01_02", "002_080_001_01_03"]
BENTHAM_VAL = ["071_015_001_01_01", "071_015_001_01_02"]
BENTHAM_TEST = ["115_001_001_02_01"]


def make_bentham(parent: Path) -> Path:
    """``parent/BenthamDatasetR0-GT/`` as published by ICFHR 2014 (returns that folder).

    In val, the second line has no image and ``002_080_001_01_03`` (train) has an empty
    transcription.
    """
    base = parent / "BenthamDatasetR0-GT"
    (base / "Partitions").mkdir(parents=True)
    (base / "Transcriptions").mkdir()
    for line_id in BENTHAM_TRAIN + BENTHAM_VAL + BENTHAM_TEST:
        if line_id != BENTHAM_VAL[1]:
            line_image(base / "Images" / "Lines" / f"{line_id}.png")
        text = "" if line_id == BENTHAM_TRAIN[2] else f"text of {line_id}\r\n"
        (base / "Transcriptions" / f"{line_id}.txt").write_text(text, encoding="utf-8")
    lists = {"TrainLines": BENTHAM_TRAIN, "ValidationLines": BENTHAM_VAL, "TestLines": BENTHAM_TEST}
    for name, ids in lists.items():
        rows = "".join(f"{i}\r\n" for i in ids)
        (base / "Partitions" / f"{name}.lst").write_text(rows, encoding="utf-8")
    return base


# ------------------------------------------------------------------------------------- iam

IAM_HEADER = """\
#--- lines.txt ---------------------------------------------------------------#
#
# iam database line information
#
# format: a01-000u-00 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
#     a01-000u-00  -> line id for form a01-000u
#     ok              -> result of word segmentation
#                            ok: line is correctly segmented
#                            err: segmentation of line has one or more errors
#
#     154             -> graylevel to binarize line
#     19              -> number of components for this line
#     408 746 1663 91 -> bounding box around this line in x,y,w,h format
#
#     A|MOVE|to|stop|Mr.|Gaitskell|from
#                     -> transcription for this line. word tokens are separated
#                        by the character |
#
"""

IAM_LINES = {
    "a01-000u-00": ("ok", "A|MOVE|to|stop|Mr.|Gaitskell|from"),
    "a01-000u-01": ("ok", "nominating|any|more|Labour|life|Peers"),
    "a01-000u-02": ("err", "is|to|be|made|at|a|meeting|of|Labour"),
    "a01-000x-00": ("ok", "&quot;|Hello|&quot;|,|he|said"),
    "b02-102-00": ("ok", "a|line|of|b02"),
    "b02-102-01": ("ok", "another|line|of|b02"),
    "c03-003a-00": ("ok", "test|form|line"),
}


def make_iam(root: Path) -> Path:
    """IAM as unpacked from lines.tgz, ascii.tgz, forms*.tgz and xml.tgz, with split lists.

    Splits: train lists forms ``a01-000u`` and ``a01-000x`` (Aachen style); val lists the line
    ids ``b02-102-00`` and ``b02-102-99`` (official style; the second does not exist); test lists
    form ``c03-003a`` whose line image is missing.
    """
    ascii_dir = root / "ascii"
    ascii_dir.mkdir(parents=True)
    rows = [f"{i} {status} 154 3 10 10 100 30 {text}" for i, (status, text) in IAM_LINES.items()]
    (ascii_dir / "lines.txt").write_text(IAM_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    for line_id in IAM_LINES:
        if not line_id.startswith("c03"):
            writer, form = line_id.split("-")[0], "-".join(line_id.split("-")[:2])
            line_image(root / "lines" / writer / form / f"{line_id}.png")
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("a01-000u\na01-000x\n", encoding="utf-8")
    (splits / "val.txt").write_text("b02-102-00\nb02-102-99\n", encoding="utf-8")
    (splits / "test.txt").write_text("c03-003a\n", encoding="utf-8")
    _iam_form(root, "a01-000u", [
        ("a01-000u-00", "ok", "A MOVE to stop Mr. Gaitskell from",
         [(100, 50, 80, 40), (200, 60, 120, 50)]),
        ("a01-000u-01", "err", "nominating any more &quot;Labour&quot;", [(100, 150, 300, 45)]),
    ])
    return root


def _iam_form(root: Path, form: str, lines: list[tuple[str, str, str, list[Box]]]) -> None:
    image = Image.new("L", (500, 300), "white")
    draw = ImageDraw.Draw(image)
    body = []
    for line_id, status, text, boxes in lines:
        words = []
        for n, (x, y, w, h) in enumerate(boxes):
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill="black")
            words.append(
                f'<word id="{line_id}-{n:02d}" tag="NN" text="w{n}">'
                f'<cmp x="{x}" y="{y}" width="{w}" height="{h}"/></word>'
            )
        # The text attribute holds IAM's own entities, escaped once more by the XML writer.
        body.append(
            f'<line id="{line_id}" segmentation="{status}" text={quoteattr(text)} threshold="154">'
            + "".join(words) + "</line>"
        )
    (root / "forms").mkdir(exist_ok=True)
    (root / "xml").mkdir(exist_ok=True)
    image.save(root / "forms" / f"{form}.png")
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        f'<form created="2001-08-31" height="300" id="{form}" writer-id="000" width="500">\n'
        '<machine-printed-part><machine-print-line text="A MOVE"/></machine-printed-part>\n'
        f'<handwritten-part>{"".join(body)}</handwritten-part>\n</form>\n'
    )
    (root / "xml" / f"{form}.xml").write_bytes(xml.encode("latin-1"))


# ---------------------------------------------------------------------------------- pagexml


@dataclass
class PageLine:
    """One TextLine to write: ``points``/``baseline`` as (x, y) lists (None: element left out),
    ``text`` None for no TextEquiv, ``words`` texts of Word children."""

    line_id: str
    points: list[tuple[float, float]] | None
    baseline: list[tuple[float, float]] | None
    text: str | None
    words: tuple[str, ...] = ()


def _pts(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:g},{y:g}" for x, y in points)


def rect(x0: int, y0: int, x1: int, y1: int) -> list[tuple[float, float]]:
    """Rectangle polygon with inclusive pixel corners."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def page_xml(
    image_name: str,
    lines: list[PageLine],
    size: tuple[int, int],
    namespace: str | None = PAGE_2013,
    prolog: str = "",
) -> str:
    """A Transkribus-style PAGE document with all lines in one TextRegion."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    body = []
    for line in lines:
        parts = [f'<TextLine id="{line.line_id}" custom="readingOrder {{index:0;}}">']
        if line.points is not None:
            parts.append(f'<Coords points="{_pts(line.points)}"/>')
        if line.baseline is not None:
            parts.append(f'<Baseline points="{_pts(line.baseline)}"/>')
        for n, word in enumerate(line.words):
            parts.append(
                f'<Word id="{line.line_id}_w{n}"><Coords points="0,0 1,0 1,1"/>'
                f"<TextEquiv><Unicode>{escape(word)}</Unicode></TextEquiv></Word>"
            )
        if line.text is not None:
            parts.append(f"<TextEquiv><Unicode>{escape(line.text)}</Unicode></TextEquiv>")
        parts.append("</TextLine>")
        body.append("\n".join(parts))
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f"{prolog}"
        f'<PcGts{xmlns}>\n<Metadata><Creator>Transkribus</Creator></Metadata>\n'
        f"<Page imageFilename={quoteattr(image_name)}"
        f' imageWidth="{size[0]}" imageHeight="{size[1]}">\n'
        '<TextRegion id="r1"><Coords points="0,0 10,0 10,10 0,10"/>\n'
        + "\n".join(body)
        + "\n</TextRegion>\n</Page>\n</PcGts>\n"
    )


def page_image(path: Path, size: tuple[int, int], ink: list[Box], paper: int = 200) -> Path:
    """A grey page (``paper``) with black ink boxes (inclusive corners)."""
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    for box in ink:
        draw.rectangle(box, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


GEOMETRY_SIZE = (600, 400)
# Three ordinary lines 40 px tall with the baseline 30 px below the top: the page's band is
# ascent 30, descent 10.
GEOMETRY_LINES = [
    PageLine("l1", rect(20, 20, 300, 60), [(30, 50), (290, 50)], "first  line "),
    PageLine("l2", rect(20, 80, 300, 120), [(30, 110), (290, 110)], "second line"),
    PageLine("l3", rect(20, 140, 300, 180), [(30, 170), (290, 170)], "third line"),
    # Hugs the baseline (8 px); its ink (x 50..100, y 205..229) lies above the polygon.
    PageLine("thin", rect(20, 226, 300, 234), [(30, 230), (290, 230)], "thin line"),
    # Stray vertex far to the right of the page, and one far above it.
    PageLine("stray_x", rect(20, 260, 300, 290)[:2] + [(5000, 280)] + rect(20, 260, 300, 290)[2:],
             [(30, 280), (290, 280)], "stray right"),
    PageLine("stray_y", [(20, 320), (150, -3000), (300, 320), (300, 350), (20, 350)],
             [(30, 340), (290, 340)], "stray up"),
    # A vertical line written downwards (baseline from top to bottom).
    PageLine("vertical", rect(500, 20, 540, 300), [(510, 30), (510, 290)], "written down"),
    # Triangle, no baseline: white outside the polygon inside its box.
    PageLine("triangle", [(340, 100), (440, 100), (440, 140)], None, "triangle"),
    # Degenerate polygons: with a baseline the band replaces it, without one it is skipped.
    PageLine("flat", [(20, 385), (300, 385)], [(30, 380), (290, 380)], "flat with baseline"),
    PageLine("flat_nobase", [(340, 385), (440, 385)], None, "flat without baseline"),
    PageLine("empty", rect(340, 20, 440, 60), [(345, 50), (435, 50)], "   "),
    PageLine("words", rect(340, 200, 440, 240), [(345, 230), (435, 230)], None, ("from", "words")),
    PageLine("own", rect(340, 260, 440, 300), [(345, 290), (435, 290)], "own text",
             ("stale", "htr")),
]
GEOMETRY_INK = [(50, 205, 100, 229), (30, 30, 280, 50)]


def make_pagexml(root: Path, namespace: str | None = PAGE_2013) -> Path:
    """``root/pages/<id>.xml`` + ``.png`` and ``root/{train,val,test}.lst``.

    Pages: ``geo`` (GEOMETRY_LINES, in train), ``JDH (1)`` (id with space and parentheses, one
    line, in val; its imageFilename says .jpg but the file is .png), ``flat`` in ``root/`` itself
    and ``alt`` in ``root/page/`` (both in test).
    """
    pages = root / "pages"
    page_image(pages / "geo.png", GEOMETRY_SIZE, GEOMETRY_INK)
    geo = page_xml("geo.png", GEOMETRY_LINES, GEOMETRY_SIZE, namespace)
    (pages / "geo.xml").write_text(geo, encoding="utf-8")
    one = [PageLine("r1l1", rect(10, 10, 110, 40), [(12, 35), (108, 35)], "Dec 21/95")]
    page_image(pages / "JDH (1).png", (200, 100), [(20, 15, 100, 35)])
    small = (200, 100)
    (pages / "JDH (1).xml").write_text(page_xml("JDH (1).jpg", one, small, namespace), "utf-8")
    page_image(root / "flat.png", (200, 100), [])
    (root / "flat.xml").write_text(page_xml("flat.png", one, small, namespace), "utf-8")
    page_image(root / "page" / "alt.png", (200, 100), [])
    (root / "page" / "alt.xml").write_text(page_xml("alt.png", one, small, namespace), "utf-8")
    (root / "train.lst").write_text("geo\n", encoding="utf-8")
    (root / "val.lst").write_text("JDH (1)\n", encoding="utf-8")
    (root / "test.lst").write_text("flat\nalt\n", encoding="utf-8")
    return root


def alto_xml(image_name: str) -> str:
    """An ALTO v4 page with a polygon line (BASELINE as points) and a box-only line."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ALTO_4}">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>{image_name}</fileName></sourceImageInformation>
  </Description>
  <Layout><Page ID="p1" WIDTH="300" HEIGHT="200" PHYSICAL_IMG_NR="1">
    <PrintSpace><TextBlock ID="b1">
      <TextLine ID="tl1" HPOS="10" VPOS="10" WIDTH="101" HEIGHT="31" BASELINE="10,35 110,35">
        <Shape><Polygon POINTS="10,10 110,10 110,40 10,40"/></Shape>
        <String CONTENT="Alto" HPOS="10" VPOS="10" WIDTH="40" HEIGHT="30"/><SP/>
        <String CONTENT="line" HPOS="60" VPOS="10" WIDTH="40" HEIGHT="30"/>
      </TextLine>
      <TextLine ID="tl2" HPOS="10" VPOS="100" WIDTH="151" HEIGHT="41" BASELINE="130">
        <String CONTENT="box" /><SP/><String CONTENT="only"/>
      </TextLine>
    </TextBlock></PrintSpace>
  </Page></Layout>
</alto>
"""
