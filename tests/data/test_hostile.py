"""Hostile inputs through the paths a user takes: readers, HTRDataModule, a training step and
predict. Each broken file is skipped or loaded with a logged reason naming it; nothing crashes,
hangs or reads outside the dataset root (the inputs are described in ``hostile.py``)."""

from __future__ import annotations

import builtins
import io
import math
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from fixtures_layouts import PageLine, alto_xml, page_image, page_xml, rect
from hostile import (
    FOLDER_TEXTS,
    INK_BOX,
    LATIN1_TEXT,
    LINE_SIZE,
    line_image,
    within,
    write_hostile,
)
from tiny_systems import TINY_TEACHER

from htr_lightning.data import HTRDataModule
from htr_lightning.data.readers import (
    BAD_POLYGON,
    BAD_XML,
    DTD_REFUSED,
    LATIN1_TEXT as LATIN1_REASON,
    OUTSIDE_ROOT,
    UNREADABLE_IMAGE,
    read_folder,
    read_iam,
    read_pagexml,
)
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.inference.pages import PageAssembler
from htr_lightning.models import TeacherSystem

HEIGHT = 32
MAX_WIDTH = 256  # small: the tiny network's CPU time grows fast with the width

UNREADABLE_LINES = {"truncated", "broken_chunk", "zero_bytes"}  # "cannot read image" on load
LOADED_LINES = set(FOLDER_TEXTS) - UNREADABLE_LINES
PAGE_LINES = {"good/l1", "good/l2", "deep_page/l1", "deep_page/l2", "polygons/ordinary",
              "polygons/bowtie", "polygons/twisted_nobase", "polygons/empty_base"}
# reason -> what each skip record names, relative to pages/pages/ and without the detail
PAGE_SKIPS = {
    DTD_REFUSED: ["bomb.xml", "bomb_utf16be.xml"],
    OUTSIDE_ROOT: ["traversal.xml", "traversal_abs.xml", "traversal_sub.xml"],
    BAD_POLYGON: ["polygons.png line bowtie_nobase", "polygons.png line empty",
                  "polygons.png line no_coords", "polygons.png line odd_count",
                  "polygons.png line outside"],
    UNREADABLE_IMAGE: ["broken_chunk_page.png", "truncated_page.png"],
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def opened(monkeypatch):
    """Resolved paths of every file opened with open() / io.open() (Pillow, pathlib and numpy
    all open files through them) while the test runs."""
    paths: list[Path] = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            paths.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)
    return paths


def _skips(report: SkipReport, folder: Path) -> dict[str, list[str]]:
    """reason -> sorted records, relative to ``folder`` and cut before any detail."""
    prefix = f"{folder}/"
    return {reason: sorted(f.removeprefix(prefix).split(":")[0].split(" (")[0] for f in files)
            for reason, files in report.reasons().items()}


def _ink(batch: dict) -> dict[str, torch.Tensor]:
    """id -> (H, width) ink of each line of a batch, padding cut off."""
    return {i: batch["images"][n, 0, :, : batch["widths"][n]] for n, i in enumerate(batch["ids"])}


# -------------------------------------------------------------------------------- readers


def test_folder_reader_lists_every_pair_and_reports_the_latin1_text(hostile):
    report = SkipReport("train")
    samples = {s.id: s for s in read_folder(hostile.lines, "train", report=report)}
    assert {i: s.text for i, s in samples.items()} == FOLDER_TEXTS  # images are read lazily
    assert report.reasons() == {LATIN1_REASON: [str(hostile.lines / "train" / "latin1.txt")]}
    for name in UNREADABLE_LINES:
        with pytest.raises(BadSampleError, match=f"{name}.png: cannot read image"):
            samples[name].load()


def test_pagexml_reader_cuts_good_lines_and_names_every_refusal(hostile, opened):
    report = SkipReport("train")
    started = time.perf_counter()
    samples = read_pagexml(hostile.pages, "train", report=report)
    assert time.perf_counter() - started < 5  # the bombs are refused, not expanded
    assert {s.id for s in samples} == PAGE_LINES
    assert _skips(report, hostile.pages / "pages") == PAGE_SKIPS
    crops = {s.id: np.asarray(s.load()) for s in samples}
    assert all(crop.ndim == 2 and min(crop.shape) >= 2 for crop in crops.values())
    assert crops["deep_page/l1"].min() < 10 and crops["deep_page/l1"].max() > 245  # not white
    # Never opened, not even to look: the traversal target is a valid page image, so reading it
    # would have cut lines from it. The recorder did see the page images that were read.
    assert hostile.outside.resolve() not in opened
    assert (hostile.pages / "pages" / "good.png").resolve() in opened
    assert all(Path(s.path).resolve().is_relative_to(hostile.pages.resolve()) for s in samples)


def test_billion_laughs_refused_before_parsing(hostile, monkeypatch):
    parsed: list[bytes] = []
    real_fromstring = ET.fromstring
    monkeypatch.setattr(ET, "fromstring", lambda data, *a, **k: (
        parsed.append(data), real_fromstring(data, *a, **k))[1])
    report = SkipReport("bombs")
    samples = within(5, lambda: read_pagexml(hostile.pages, "train", split_spec="bombs.lst",
                                              report=report))
    assert samples == []
    assert _skips(report, hostile.pages / "pages") == {DTD_REFUSED: PAGE_SKIPS[DTD_REFUSED]}
    assert parsed == []  # refused on the raw bytes: expat never saw a declaration to expand


def _one_line_page(polygon, baseline) -> str:
    return page_xml("p.png", [PageLine("l1", polygon, baseline, "text")], (100, 50))


HUGE = "9" * 400  # float() makes it inf


@pytest.mark.parametrize(("document", "reason", "kept"), [
    pytest.param(page_xml("p.png", [], (100, 50)).replace("UTF-8", "x-no-such"), BAD_XML, 0,
                 id="unknown_encoding"),  # LookupError
    pytest.param(page_xml("p.png", [], (100, 50)).replace("UTF-8", "utf-7"), BAD_XML, 0,
                 id="multibyte_encoding"),  # ValueError
    pytest.param(_one_line_page([(10, 10), (123, 10), (90, 40)], None).replace("123", HUGE),
                 BAD_POLYGON, 0, id="polygon_at_infinity"),  # OverflowError
    pytest.param(_one_line_page(rect(10, 10, 90, 40), [(12, 30), (123, 30)]).replace("123", HUGE),
                 None, 1, id="baseline_at_infinity_polygon_kept"),  # OverflowError
    pytest.param(alto_xml("p.png").replace('HPOS="10" VPOS="100"', 'HPOS="ten" VPOS="100"'),
                 BAD_POLYGON, 1, id="alto_box_not_a_number"),  # ValueError
    pytest.param(alto_xml("p.png").replace('HPOS="10" VPOS="100"', 'HPOS="nan" VPOS="100"'),
                 BAD_POLYGON, 1, id="alto_box_nan"),  # ValueError
])
def test_pagexml_values_that_used_to_raise(tmp_path, document, reason, kept):
    # Each raised the exception named beside it before the fix; now one reason, no exception.
    pages = tmp_path / "pages"
    page_image(pages / "p.png", (100, 50), [(20, 15, 80, 35)])
    (pages / "p.xml").write_text(document, encoding="utf-8")
    (tmp_path / "train.lst").write_text("p\n", encoding="utf-8")
    report = SkipReport("train")
    assert len(read_pagexml(tmp_path, "train", report=report)) == kept
    assert list(report.reasons()) == ([reason] if reason else [])


def test_iam_form_component_not_a_number_is_skipped(tmp_path):
    # Raised ValueError before the fix, like ALTO's box attributes.
    (tmp_path / "ascii").mkdir()
    (tmp_path / "ascii" / "lines.txt").write_text(
        "f-1-00 ok 154 1 10 10 80 20 ok|line\nf-1-01 ok 154 1 10 40 80 20 bad|line\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("f-1\n")
    page_image(tmp_path / "forms" / "f-1.png", (120, 80), [(15, 12, 80, 25)])
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "f-1.xml").write_text(
        '<form id="f-1"><handwritten-part>'
        '<line id="f-1-00" text="ok line"><cmp x="10" y="10" width="80" height="20"/></line>'
        '<line id="f-1-01" text="bad line"><cmp x="ten" y="40" width="80" height="20"/></line>'
        "</handwritten-part></form>")
    report = SkipReport("train")
    samples = read_iam(tmp_path, "train", source="forms", report=report)
    assert [s.id for s in samples] == ["f-1-00"]
    assert _skips(report, tmp_path / "xml") == {BAD_POLYGON: ["f-1.xml line f-1-01"]}


# ------------------------------------------------------------------------ the data module


def _line_datamodule(hostile, **kwargs) -> HTRDataModule:
    return HTRDataModule(dataset="folder", root=str(hostile.lines), height=HEIGHT,
                         max_width=MAX_WIDTH, batch_size=16, augment=False, **kwargs)


def test_datamodule_pass_over_hostile_lines(hostile, caplog):
    dm = _line_datamodule(hostile)
    with caplog.at_level("WARNING", logger="htr_lightning"):
        dm.setup("fit")
        batches = list(dm.train_dataloader())
    assert len(batches) == 1
    batch = batches[0]
    assert set(batch["ids"]) == LOADED_LINES
    assert dict(zip(batch["ids"], batch["texts"]))["latin1"] == LATIN1_TEXT
    assert f"{LATIN1_REASON}: {hostile.lines / 'train' / 'latin1.txt'}" in caplog.text
    for name in UNREADABLE_LINES:
        assert f"skipping line {name}: {hostile.lines / 'train' / name}.png: cannot read image" \
            in caplog.text
    assert batch["images"].shape[:3] == (len(LOADED_LINES), 1, HEIGHT)
    ink = _ink(batch)
    assert ink["very_wide"].shape == (HEIGHT, MAX_WIDTH)  # 40,000 px at height 32: squeezed
    assert ink["one_pixel"].shape == (HEIGHT, HEIGHT)  # 1 x 1 scaled to 32 x 32
    x0, y0, x1, y1 = INK_BOX  # line images are 32 px high: no resizing
    for name in ("good_1", "cmyk", "deep", "lab", "latin1"):
        assert ink[name].shape == (LINE_SIZE[1], LINE_SIZE[0]), name
        assert ink[name][y0 + 1 : y1, x0 + 1 : x1].min() > 0.9, name  # the ink is ink,
        assert ink[name][: y0 - 1].max() < 0.1, name  # and the paper paper (16-bit included)
    assert 0.3 < ink["very_wide"].mean() < 0.9


def test_datamodule_pass_over_hostile_pages(hostile, caplog):
    dm = HTRDataModule(dataset="pagexml", root=str(hostile.pages), height=HEIGHT, batch_size=16,
                       augment=False)
    with caplog.at_level("WARNING", logger="htr_lightning"):
        dm.setup("fit")
        batches = list(dm.train_dataloader())
    assert sorted(i for b in batches for i in b["ids"]) == sorted(PAGE_LINES)
    for reason, names in PAGE_SKIPS.items():
        assert reason in caplog.text
        assert all(str(hostile.pages / "pages" / name) in caplog.text for name in names)


def test_one_training_step_on_hostile_lines(hostile):
    dm = _line_datamodule(hostile)
    torch.manual_seed(0)
    model = TeacherSystem(charset=dm.charset, **TINY_TEACHER)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))


def test_predict_on_hostile_inputs(hostile, opened, caplog):
    pages = hostile.pages / "pages"
    inputs = [hostile.lines / "train", pages / "traversal.xml", pages / "bomb.xml",
              pages / "polygons.xml"]
    dm = _line_datamodule(hostile, predict_paths=[str(p) for p in inputs])
    model = TeacherSystem(charset="abc ", **TINY_TEACHER)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    with caplog.at_level("WARNING", logger="htr_lightning"):
        records = [r for batch in trainer.predict(model, datamodule=dm) for r in batch]
    assembler = PageAssembler()
    results = {Path(d["id"]).name: d for d in map(assembler.add, records) if d is not None}
    assert assembler.pending == []
    lines = {p.name for p in (hostile.lines / "train").iterdir() if p.suffix != ".txt"}
    assert set(results) == lines | {"traversal.xml", "bomb.xml", "polygons.xml"}
    for name in UNREADABLE_LINES:
        assert results[f"{name}.png"]["error"].startswith(
            f"{hostile.lines / 'train' / name}.png: cannot read image")
    # A 1 x 1 image is as high as wide, so "auto" treats it as a page, and finds no line in it.
    assert results["one_pixel.png"]["error"] == "no text line found"
    for name, reason in (("traversal.xml", OUTSIDE_ROOT), ("bomb.xml", DTD_REFUSED)):
        assert results[name]["error"] == f"{pages / name}: cannot read PAGE-XML ({reason})"
    assert f"{OUTSIDE_ROOT}: {pages / 'traversal.xml'}" in caplog.text
    assert f"{DTD_REFUSED}: {pages / 'bomb.xml'}" in caplog.text
    assert len(results["polygons.xml"]["lines"]) == 4  # predict keeps lines without text
    transcribed = lines - {f"{n}.png" for n in UNREADABLE_LINES} - {"one_pixel.png"}
    for name in transcribed:
        assert "error" not in results[name] and len(results[name]["lines"]) == 1, name
        assert isinstance(results[name]["text"], str)
    assert hostile.outside.resolve() not in opened
    assert (hostile.lines / "train" / "deep.png").resolve() in opened



def test_only_raster_decoders_are_used(tmp_path):
    # An EPS file named .png: Pillow would identify it as EPS (and hand it to Ghostscript to
    # decode, where installed); our loaders only let the raster decoders look at it.
    eps = tmp_path / "line.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with Image.open(eps) as unrestricted:
        assert unrestricted.format == "EPS"
    with pytest.raises(BadSampleError, match=f"{eps}: cannot read image"):
        LineSample("line", "", str(eps)).load()
    # A PNG under a JPEG name is still read: the content decides among the allowed formats.
    png = tmp_path / "renamed.jpg"
    line_image().save(png, format="PNG")
    assert LineSample("renamed", "", str(png)).load().size == LINE_SIZE
