"""A dataset of hostile inputs, written by code (no binary files in git).

:func:`write_hostile` lays out, under one folder::

    lines/                    folder-reader dataset (NAME.png + NAME.txt pairs)
      train/  good_1, good_2 (ordinary lines), truncated.png (PNG cut in half),
              broken_chunk.png (a garbage chunk amid the pixel data), zero_bytes.png (empty
              file), one_pixel.png (1x1), very_wide.png (50,000 px wide), cmyk.jpg (CMYK JPEG),
              deep.png (16-bit grayscale PNG), lab.tif (CIELab TIFF), latin1 (transcription in
              Latin-1)
      val/    good_3
    pages/                    PAGE-XML dataset (pages/ + <split>.lst)
      pages/  good (two lines), polygons (self-intersecting, empty, off-page ... polygons),
              bomb (billion laughs), bomb_utf16be (the same bomb in UTF-16BE without a BOM),
              traversal, traversal_sub, traversal_abs (imageFilename leaving the root),
              truncated_page, broken_chunk_page (page images broken as the lines above),
              deep_page (16-bit page image)
      train.lst (all of them), val.lst (good), bombs.lst (the two bombs)
    etc/passwd                a valid page image outside both roots, where ``../../etc/passwd``
                              from ``pages/pages/`` leads: were it ever read, lines would be cut
                              from it

Ink is black boxes on white (or grey) paper, so tests can check where it ends up.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from fixtures_layouts import PageLine, page_image, page_xml, rect
from PIL import Image, ImageDraw

T = TypeVar("T")

LINE_SIZE = (120, 32)
INK_BOX = (10, 8, 109, 23)  # inclusive corners of the ink in every line image
WIDE_SIZE = (50_000, 40)
LATIN1_TEXT = "café crème"

# The texts of the folder dataset's train split: every line that has a transcription.
FOLDER_TEXTS = {
    "good_1": "first good line",
    "good_2": "second good line",
    "truncated": "truncated image",
    "broken_chunk": "broken chunk",
    "zero_bytes": "zero byte image",
    "one_pixel": "dot",
    "very_wide": "a very wide line",
    "cmyk": "printed in cmyk",
    "deep": "sixteen bits",
    "lab": "cielab colours",
    "latin1": LATIN1_TEXT,
}

PAGE_SIZE = (300, 200)
GOOD_PAGE_LINES = [
    PageLine("l1", rect(10, 10, 290, 50), [(15, 40), (285, 40)], "good page line one"),
    PageLine("l2", rect(10, 70, 290, 110), [(15, 100), (285, 100)], "good page line two"),
]
GOOD_PAGE_INK = [(20, 20, 280, 40), (20, 80, 280, 100)]
# Self-intersecting polygons: the symmetric bow tie's lobes cancel (zero shoelace area, so it
# is degenerate), the twisted one's do not; with a baseline any polygon that cannot be used is
# replaced by the baseline band.
BOWTIE = [(10, 50), (190, 90), (190, 50), (10, 90)]
TWISTED = [(10, 120), (190, 170), (190, 140), (10, 170)]
POLYGON_LINES = [
    PageLine("ordinary", rect(10, 10, 190, 40), [(12, 35), (188, 35)], "ordinary"),
    PageLine("bowtie", BOWTIE, [(12, 80), (188, 80)], "bow tie with baseline"),
    PageLine("bowtie_nobase", BOWTIE, None, "bow tie alone"),
    PageLine("twisted_nobase", TWISTED, None, "twisted alone"),
    PageLine("empty", [], None, "empty polygon"),
    PageLine("empty_base", [], [(12, 180), (188, 180)], "empty polygon with baseline"),
    PageLine("no_coords", None, None, "no Coords element"),
    PageLine("odd_count", [(10, 10), (20, 20), (30, 30)], None, "written with 5 numbers"),
    PageLine("outside", rect(-500, -400, -300, -350), [(-490, -360), (-310, -360)], "off page"),
]
ODD_POINTS = 'points="10,10 20,20 30,30"'  # written without its last number
BOMB_LEVELS = 10  # lol9 would expand to 10**9 "lol"s
ENTITY_MARKER = "@ENTITY@"  # stands for the bomb's entity reference in a line's text


def line_image() -> Image.Image:
    """A white 8-bit line with one black box of ink (INK_BOX)."""
    image = Image.new("L", LINE_SIZE, 255)
    ImageDraw.Draw(image).rectangle(INK_BOX, fill=0)
    return image


def broken_chunk(png: bytes) -> bytes:
    """``png`` with its pixel data split in two chunks, the first intact, the second with a
    type that is not a chunk name: Pillow meets it while decoding and raises SyntaxError."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    pixels = png[start + 8 : start + 8 + length]
    half = pixels[: length // 2]
    intact = (struct.pack(">I", len(half)) + b"IDAT" + half
              + struct.pack(">I", zlib.crc32(b"IDAT" + half)))
    garbage = struct.pack(">I", len(pixels) - len(half)) + b"\xac\x1d\xb5\x98"
    return png[:start] + intact + garbage + pixels[len(half) :]


def deep_png(size: tuple[int, int], ink: list[tuple[int, int, int, int]]) -> bytes:
    """16-bit grayscale PNG: paper at 65,000, ink boxes (inclusive corners) at 1,000. PIL's
    plain convert("L") would clip both to 255, a white image."""
    pixels = np.full(size[::-1], 65_000, dtype=np.uint16)
    for x0, y0, x1, y1 in ink:
        pixels[y0 : y1 + 1, x0 : x1 + 1] = 1_000
    return encode(Image.fromarray(pixels), "PNG")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """The image as a file of format ``fmt`` would hold it."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def billion_laughs(levels: int = BOMB_LEVELS) -> str:
    """The DOCTYPE of the billion-laughs bomb; ``&lol{levels - 1};`` expands 10**(levels-1) x."""
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, levels)
    ]
    return f"<!DOCTYPE lolz [{''.join(entities)}]>\n"


@dataclass(frozen=True)
class Hostile:
    """Where :func:`write_hostile` put things."""

    base: Path
    lines: Path  # folder dataset root
    pages: Path  # PAGE-XML dataset root
    outside: Path  # the image the traversal XML points at, outside both roots


def _write_lines(root: Path) -> None:
    train, val = root / "train", root / "val"
    train.mkdir(parents=True)
    val.mkdir()
    for name, text in FOLDER_TEXTS.items():
        encoding = "latin-1" if name == "latin1" else "utf-8"
        (train / f"{name}.txt").write_bytes(text.encode(encoding))
    whole = encode(line_image(), "PNG")
    for name in ("good_1", "good_2", "latin1"):
        (train / f"{name}.png").write_bytes(whole)
    (train / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (train / "broken_chunk.png").write_bytes(broken_chunk(whole))
    (train / "zero_bytes.png").write_bytes(b"")
    (train / "one_pixel.png").write_bytes(encode(Image.new("L", (1, 1), 0), "PNG"))
    wide = Image.new("L", WIDE_SIZE, 255)
    ImageDraw.Draw(wide).rectangle((10, 8, WIDE_SIZE[0] - 11, 31), fill=0)
    (train / "very_wide.png").write_bytes(encode(wide, "PNG"))
    cmyk = Image.new("CMYK", LINE_SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(cmyk).rectangle(INK_BOX, fill=(0, 0, 0, 255))
    (train / "cmyk.jpg").write_bytes(encode(cmyk, "JPEG", quality=95))
    (train / "deep.png").write_bytes(deep_png(LINE_SIZE, [INK_BOX]))
    (train / "lab.tif").write_bytes(encode(line_image().convert("RGB").convert("LAB"), "TIFF"))
    (val / "good_3.png").write_bytes(whole)
    (val / "good_3.txt").write_text("third good line", encoding="utf-8")


def _write_pages(root: Path, outside: Path) -> None:
    pages = root / "pages"
    pages.mkdir(parents=True)

    def xml(page_id: str, image_name: str, lines: list[PageLine], prolog: str = "",
            codec: str = "utf-8") -> None:
        text = page_xml(image_name, lines, PAGE_SIZE, prolog=prolog)
        text = text.replace(ENTITY_MARKER, f"&lol{BOMB_LEVELS - 1};")
        text = text.replace(ODD_POINTS, ODD_POINTS[: ODD_POINTS.rindex(",")] + '"')
        if codec != "utf-8":  # the UTF-16s
            text = text.replace('encoding="UTF-8"', 'encoding="UTF-16"')
        (pages / f"{page_id}.xml").write_bytes(text.encode(codec))

    (pages / "sub").mkdir()  # so that sub/../../../etc/passwd is a path that exists
    page_image(pages / "good.png", PAGE_SIZE, GOOD_PAGE_INK, paper=230)
    xml("good", "good.png", GOOD_PAGE_LINES)
    page_image(pages / "polygons.png", PAGE_SIZE, [], paper=230)
    xml("polygons", "polygons.png", POLYGON_LINES)
    bomb_line = [PageLine("l1", rect(10, 10, 290, 50), [(15, 40), (285, 40)], ENTITY_MARKER)]
    page_image(pages / "bomb.png", PAGE_SIZE, GOOD_PAGE_INK)
    xml("bomb", "bomb.png", bomb_line, prolog=billion_laughs())
    # Expat reads UTF-16BE without a BOM; the DTD check must too.
    xml("bomb_utf16be", "bomb.png", bomb_line, prolog=billion_laughs(), codec="utf-16-be")
    xml("traversal", "../../etc/passwd", GOOD_PAGE_LINES)
    xml("traversal_sub", "sub/../../../etc/passwd", GOOD_PAGE_LINES)
    xml("traversal_abs", str(outside), GOOD_PAGE_LINES)
    whole = (pages / "good.png").read_bytes()
    (pages / "truncated_page.png").write_bytes(whole[: len(whole) // 2])
    xml("truncated_page", "truncated_page.png", GOOD_PAGE_LINES)
    (pages / "broken_chunk_page.png").write_bytes(broken_chunk(whole))
    xml("broken_chunk_page", "broken_chunk_page.png", GOOD_PAGE_LINES)
    (pages / "deep_page.png").write_bytes(deep_png(PAGE_SIZE, GOOD_PAGE_INK))
    xml("deep_page", "deep_page.png", GOOD_PAGE_LINES)
    ids = ["good", "polygons", "bomb", "bomb_utf16be", "traversal", "traversal_sub",
           "traversal_abs", "truncated_page", "broken_chunk_page", "deep_page"]
    (root / "train.lst").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (root / "val.lst").write_text("good\n", encoding="utf-8")
    (root / "bombs.lst").write_text("bomb\nbomb_utf16be\n", encoding="utf-8")


def write_hostile(base: Path) -> Hostile:
    """Writes the hostile datasets under ``base`` (see the module docstring)."""
    outside = base / "etc" / "passwd"  # no suffix, like the real one; PNG inside
    outside.parent.mkdir(parents=True)
    page = Image.new("L", PAGE_SIZE, 230)
    for box in GOOD_PAGE_INK:
        ImageDraw.Draw(page).rectangle(box, fill=0)
    outside.write_bytes(encode(page, "PNG"))
    hostile = Hostile(base, base / "lines", base / "pages", outside)
    _write_lines(hostile.lines)
    _write_pages(hostile.pages, outside)
    return hostile


def within(seconds: float, work: Callable[[], T]) -> T:
    """``work()``, run in a thread; fails (without waiting longer) if it is not done in
    ``seconds``, so a hang is a test failure rather than a stuck run. Exceptions reach the caller.
    """
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
