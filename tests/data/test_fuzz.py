"""Bounded fuzzing of the PAGE-XML reader and the image loaders with hypothesis.

Derandomized (the same examples on every run, so CI is reproducible) and without an example
database. Each search runs in a thread under :func:`hostile.within`, so a hang fails the test
instead of stalling the suite; the per-example deadline is generous for a loaded machine.

Contracts checked:

- ``read_pagexml`` never raises. On generated documents every ``TextLine`` ends up either as a
  sample or in the report (duplicate id, empty text, unusable polygon), unless the whole page
  is refused with exactly one reason; on random and mutated bytes the reasons are the
  reader's own. Every sample decodes and comes from inside the dataset root.
- ``LineSample.load`` + ``LinePreprocessor`` on random and mutated PNG / JPEG / TIFF bytes give
  a (1, height, W) tensor in [0, 1] or a :class:`BadSampleError` naming the file.
- ``PredictLines`` (the ``predict`` path, pages split as in "auto") gives for each file either
  lines of that height or one error record naming it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import PIL
import pytest
import torch
from fixtures_layouts import PAGE_2013, PAGE_2019, page_image
from hostile import within
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from htr_lightning.data import readers
from htr_lightning.data.readers import read_pagexml
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.inference.pages import PredictLines

HEIGHT = 32
SEARCH_SECONDS = 120  # a whole search finishing later than this counts as a hang

FUZZ = dict(derandomize=True, database=None, deadline=timedelta(seconds=5))

PAGE_LEVEL = {readers.DTD_REFUSED, readers.BAD_XML, readers.UNSUPPORTED, readers.OUTSIDE_ROOT,
              readers.NO_IMAGE, readers.UNREADABLE_IMAGE}
LINE_LEVEL = {readers.DUPLICATE_ID, readers.EMPTY_TEXT, readers.BAD_POLYGON}
PILLOW = Path(PIL.__file__).parent


@contextmanager
def only_pillow_warnings() -> Iterator[None]:
    """Broken files make Pillow warn about what it skips (corrupt EXIF, tags past the end of
    the file): those are expected, so they are recorded here rather than printed once per
    example. A warning from anywhere else (numpy overflow in our geometry, ...) fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    foreign = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
               if not Path(w.filename).is_relative_to(PILLOW)]
    assert not foreign, foreign


@pytest.fixture(scope="module")
def page_root(tmp_path_factory) -> Path:
    """A PAGE-XML dataset of one page ``p`` (its XML written by each example), with an image
    outside the root for the traversal names to find."""
    base = tmp_path_factory.mktemp("fuzz_pages")
    page_image(base / "outside.png", (200, 100), [(20, 20, 180, 40)])
    root = base / "ds"
    page_image(root / "pages" / "p.png", (200, 100), [(20, 20, 180, 40), (20, 60, 180, 80)])
    (root / "pages" / "sub").mkdir()  # so that sub/../../../outside.png exists
    (root / "train.lst").write_text("p\n", encoding="utf-8")
    return root


def _read(root: Path, data: bytes) -> tuple[list[LineSample], SkipReport]:
    (root / "pages" / "p.xml").write_bytes(data)
    report = SkipReport("fuzz")
    with only_pillow_warnings():
        samples = read_pagexml(root, "train", report=report)
    inside = root.resolve()
    for sample in samples:
        assert Path(sample.path).resolve().is_relative_to(inside)
        assert min(sample.load().size) >= 2
    assert set(report.reasons()) <= PAGE_LEVEL | LINE_LEVEL
    return samples, report


# ------------------------------------------------------------------- generated PAGE-XML

# Text: mostly plain, sometimes anything XML 1.0 allows (escaping makes it safe anywhere).
XML_TEXT = st.text("ab é\t", min_size=1, max_size=8) | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff",
                  min_codepoint=0x20) | st.sampled_from("\t\n"), max_size=12)
ON_PAGE = st.integers(0, 200).map(str)
NUMBERS = st.one_of(
    ON_PAGE,
    st.integers(-300, 600).map(str),
    st.floats(-1e4, 1e4).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["9" * 400, "-" + "9" * 400, "1e999", "nan", "-0", "", "x",
                     "0." + "0" * 305 + "1"]),
)


def _joined(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{x},{y}" for x, y in pairs)


USABLE = st.lists(st.tuples(ON_PAGE, ON_PAGE), min_size=3, max_size=6).map(_joined)  # mostly
POINTS = st.one_of(
    st.lists(st.tuples(NUMBERS, NUMBERS), max_size=8).map(_joined),
    st.text("0123456789,.- e\t", max_size=30),
)
IMAGE_NAMES = st.sampled_from(
    ["p.png"] * 6 + ["missing.png", "../../outside.png", "sub/../../../outside.png", "/etc/passwd",
                     "C:\\scans\\p.png", "", "./p.PNG"])
PROLOGS = st.sampled_from([""] * 6 + ["<!-- c -->", "<!DOCTYPE PcGts>"])
ENCODINGS = st.sampled_from([  # (Python codec, declared name); expat cannot read the last two
    ("utf-8", "UTF-8"), ("utf-8", "UTF-8"), ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"),
    ("utf-16-be", "UTF-16"), ("latin-1", "ISO-8859-1"), ("cp1252", "windows-1252"),
    ("utf-8", "x-unknown"), ("utf-8", "utf-7"),
])


def _attr(name: str, value: str | None) -> str:
    return "" if value is None else f" {name}={quoteattr(value)}"


@st.composite
def coords(draw, tag: str) -> str:
    """A Coords / Baseline element: left out, a points attribute, or PAGE 2010 Point children."""
    form = draw(st.sampled_from(["usable", "usable", "points", "none", "children"]))
    if form == "none":
        return ""
    if form != "children":
        return f"<{tag}{_attr('points', draw(USABLE if form == 'usable' else POINTS))}/>"
    points = draw(st.lists(st.tuples(st.none() | NUMBERS, st.none() | NUMBERS), max_size=4))
    children = "".join(f"<Point{_attr('x', x)}{_attr('y', y)}/>" for x, y in points)
    return f"<{tag}>{children}</{tag}>"


@st.composite
def text_equiv(draw) -> str:
    index = draw(st.sampled_from([None, None, "0", "1", "-1", "x", "9" * 40]))
    unicode = draw(XML_TEXT) if draw(st.integers(0, 3)) else None
    inner = "" if unicode is None else f"<Unicode>{escape(unicode)}</Unicode>"
    return f"<TextEquiv{_attr('index', index)}>{inner}</TextEquiv>"


@st.composite
def elements(draw, depth: int = 0) -> tuple[str, int]:
    """An element to put under Page, and the number of TextLines in it (nested ones too)."""
    if depth == 2 or draw(st.integers(0, 2)):
        line_id = draw(st.sampled_from([None, "l1", "l2", "l3", "line0", "", "a/b", "../x"]))
        parts = [draw(coords("Coords")), draw(coords("Baseline")), draw(text_equiv())]
        parts += [f"<Word>{draw(text_equiv())}</Word>" for _ in range(draw(st.integers(0, 1)))]
        count = 1
        if depth < 2 and not draw(st.integers(0, 3)):  # a TextLine inside a TextLine
            child, count_inside = draw(elements(depth + 1))
            parts.append(child)
            count += count_inside
        parts = draw(st.permutations(parts))
        return f"<TextLine{_attr('id', line_id)}>{''.join(parts)}</TextLine>", count
    tag = draw(st.sampled_from(["TextRegion", "TableRegion", "Word", "Unknown", "TextEquiv"]))
    children = draw(st.lists(elements(depth + 1), max_size=3))
    return f"<{tag}>{''.join(c for c, _ in children)}</{tag}>", sum(n for _, n in children)


@st.composite
def page_documents(draw) -> tuple[bytes, int]:
    """A PAGE document as bytes, and how many TextLines its Page holds."""
    body = draw(st.lists(elements(), max_size=4))
    namespace = draw(st.sampled_from([PAGE_2013, PAGE_2019, None, "urn:x"]))
    page = (f"<Page{_attr('imageFilename', draw(IMAGE_NAMES))}"
            f"{_attr('imageWidth', draw(st.none() | NUMBERS))}"
            f"{_attr('imageHeight', draw(st.none() | NUMBERS))}>"
            + "".join(b for b, _ in body) + "</Page>")
    codec, declared = draw(ENCODINGS)
    text = (f'<?xml version="1.0" encoding="{declared}"?>\n{draw(PROLOGS)}'
            f"<PcGts{_attr('xmlns', namespace)}><Metadata/>{page}</PcGts>")
    return text.encode(codec, errors="xmlcharrefreplace"), sum(n for _, n in body)


def test_pagexml_reader_accounts_for_every_generated_line(page_root):
    @settings(max_examples=200, **FUZZ)
    @given(page_documents())
    def search(document):
        data, lines = document
        samples, report = _read(page_root, data)
        page_level = set(report.reasons()) & PAGE_LEVEL
        if page_level:
            assert samples == [] and report.count() == 1, report.reasons()
        else:
            assert len(samples) + report.count() == lines, report.reasons()

    within(SEARCH_SECONDS, search)


def _mutate(data: bytes, edits: list[tuple[float, int, bytes]]) -> bytes:
    """Applies (position as a fraction, kind, bytes) edits: 0 overwrite, 1 insert, 2 delete
    len(bytes) + 1 bytes, 3 truncate."""
    out = bytearray(data)
    for where, kind, chunk in edits:
        at = int(where * len(out))
        if kind == 0:
            out[at : at + len(chunk)] = chunk
        elif kind == 1:
            out[at:at] = chunk
        elif kind == 2:
            del out[at : at + len(chunk) + 1]
        else:
            del out[at:]
    return bytes(out)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), st.binary(min_size=1, max_size=8)),
                 min_size=1, max_size=4)


def test_pagexml_reader_survives_random_and_mutated_bytes(page_root):
    @settings(max_examples=200, **FUZZ)
    @given(st.one_of(st.binary(max_size=600),
                     st.builds(lambda doc, edits: _mutate(doc[0], edits), page_documents(), EDITS)))
    def search(data):
        _read(page_root, data)

    within(SEARCH_SECONDS, search)


# ------------------------------------------------------------------------------ images


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _line(mode: str = "L", size: tuple[int, int] = (60, 20)) -> Image.Image:
    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).rectangle((5, 5, size[0] - 6, size[1] - 6), fill=0)
    return image.convert(mode)


def _page() -> Image.Image:
    image = Image.new("L", (120, 120), 255)
    draw = ImageDraw.Draw(image)
    for top in range(10, 110, 20):
        draw.rectangle((10, top, 110, top + 8), fill=0)
    return image


SEEDS = [
    _encoded(_line(), "PNG"), _encoded(_line("RGB"), "PNG"), _encoded(_line("I;16"), "PNG"),
    _encoded(_line("RGB"), "JPEG"), _encoded(_line("CMYK"), "JPEG"),
    _encoded(_line("RGB"), "JPEG", progressive=True), _encoded(_line(), "TIFF"),
    _encoded(_line(), "TIFF", compression="tiff_lzw"), _encoded(_page(), "PNG"),
    _encoded(_page(), "JPEG"),
]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF89a", b"BM",
         b"RIFF\x00\x00\x00\x00WEBP"]
IMAGE_BYTES = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGIC), st.binary(max_size=512)),
    st.builds(_mutate, st.sampled_from(SEEDS), EDITS),
)


def test_line_loader_gives_a_tensor_or_a_bad_sample_naming_the_file():
    preprocess = LinePreprocessor(height=HEIGHT)

    @settings(max_examples=600, **FUZZ)
    @given(IMAGE_BYTES)
    def search(data):
        sample = LineSample("fuzz", "", "fuzz/line.png", data)
        with only_pillow_warnings():
            try:
                tensor, width = preprocess(sample.load())
            except BadSampleError as err:
                assert str(err).startswith("fuzz/line.png: cannot read image")
                return
        assert tensor.dtype == torch.float32 and tensor.shape[:2] == (1, HEIGHT)
        assert preprocess.min_width <= width == tensor.shape[2] <= preprocess.max_width
        assert torch.isfinite(tensor).all() and 0 <= tensor.min() <= tensor.max() <= 1

    within(SEARCH_SECONDS, search)


def test_predict_sources_give_lines_or_an_error_record_naming_the_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_predict")
    preprocess = LinePreprocessor(height=HEIGHT)

    @settings(max_examples=200, **FUZZ)
    @given(IMAGE_BYTES, st.sampled_from([".png", ".jpg", ".tif"]))
    def search(data, suffix):
        path = folder / f"input{suffix}"
        path.write_bytes(data)
        with only_pillow_warnings():
            items = list(PredictLines([str(path)], preprocess, "auto"))
        assert items
        if items[0]["image"] is None:
            assert len(items) == 1 and items[0]["meta"]["source"] == str(path)
            error = items[0]["meta"]["error"]
            assert error == "no text line found" or error.startswith(f"{path}: cannot read image")
            return
        assert [it["meta"]["index"] for it in items] == list(range(items[0]["meta"]["count"]))
        for item in items:
            assert item["image"].shape[:2] == (1, HEIGHT) and item["meta"]["source"] == str(path)

    within(SEARCH_SECONDS, search)
