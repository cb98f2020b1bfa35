import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tiny_systems import save_cli_checkpoint

from htr_lightning.cli import cli_main
from htr_lightning.data.synthetic import SyntheticLines, compose_page
from htr_lightning.inference.pages import PageAssembler, source_lines
from htr_lightning.models import TeacherSystem

PAGE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15">
  <Page imageFilename="{image}" imageWidth="{w}" imageHeight="{h}">
    <TextRegion id="r1">
      {lines}
    </TextRegion>
  </Page>
</PcGts>
"""
LINE_XML = """<TextLine id="l{i}"><Coords points="{x0},{y0} {x1},{y0} {x1},{y1} {x0},{y1}"/>
        <Baseline points="{x0},{yb} {x1},{yb}"/><TextEquiv><Unicode>{text}</Unicode></TextEquiv></TextLine>"""


@pytest.fixture
def tiny_model(tiny_teacher_kwargs):
    torch.manual_seed(0)
    return TeacherSystem(charset=SyntheticLines.charset, **tiny_teacher_kwargs).eval()


def _page(n=4, seed=0, angle=1.0, words=(1, 3)):
    # short lines: the page is at most 1.5 times as wide as high, which "auto" splits
    lines = [s.load() for s in SyntheticLines(n, split="test", seed=seed, min_words=words[0],
                                              max_words=words[1])]
    return compose_page(lines, [18 + 6 * i for i in range(n - 1)], angle=angle)


def test_page_is_split_and_line_passes_through(tiny_model):
    page, _ = _page(5)
    assert page.width <= 1.5 * page.height
    line = SyntheticLines(1, split="val", seed=1)[0].load()
    out = tiny_model.transcribe([page, line])
    assert [len(t.lines) for t in out] == [5, 1]
    assert out[0].text == "\n".join(x.text for x in out[0].lines)
    assert out[1].lines[0].box == (0, 0, line.width, line.height)
    assert len(tiny_model.transcribe(page, segment="none").lines) == 1
    assert len(tiny_model.transcribe(line, segment="page").lines) == 1
    wide, _ = _page(3, seed=7, words=(5, 6))  # a wide paragraph needs segment="page"
    assert len(tiny_model.transcribe(wide).lines) == 1
    assert len(tiny_model.transcribe(wide, segment="page").lines) == 3


def test_light_on_dark_gives_the_same_text_as_its_inverse(tiny_model):
    line = SyntheticLines(1, split="val", seed=2)[0].load()
    inverse = ImageOps.invert(line)
    x, _ = tiny_model.preprocess(line)
    y, _ = tiny_model.preprocess(inverse)
    assert torch.equal(x, y)
    assert tiny_model.transcribe(inverse) == tiny_model.transcribe(line)
    page, _ = _page(5, seed=3)
    assert tiny_model.transcribe(ImageOps.invert(page)) == tiny_model.transcribe(page)


def test_page_xml_lines_are_cut_along_their_polygons(tmp_path):
    page, rows = _page(3, seed=4, angle=0.0)
    page.save(tmp_path / "p.png")
    lines = "\n      ".join(
        LINE_XML.format(i=i, x0=40, x1=page.width - 40, y0=top, y1=bottom, yb=bottom - 10,
                        text="" if i == 1 else f"line {i}")
        for i, (top, bottom) in enumerate(rows))
    xml = tmp_path / "p.xml"
    xml.write_text(PAGE_XML.format(image="p.png", w=page.width, h=page.height, lines=lines))
    got = source_lines(xml)
    assert [(x.index, x.count) for x in got] == [(0, 3), (1, 3), (2, 3)]  # untranscribed kept
    assert all(x.image.height >= 0.8 * (b - t) for x, (t, b) in zip(got, rows))


def test_assembler_waits_for_every_line():
    pages = PageAssembler()
    assert pages.add({"source": "a", "index": 1, "count": 2, "box": None, "text": "two",
                      "confidence": 0.5}) is None
    assert pages.pending == ["a"]
    done = pages.add({"source": "a", "index": 0, "count": 2, "box": None, "text": "one",
                      "confidence": 1.0})
    assert done["text"] == "one\ntwo" and done["confidence"] == pytest.approx(0.75)
    assert pages.pending == []
    empty = pages.add({"source": "b", "index": 0, "count": 0, "box": None, "error": "no line"})
    assert empty == {"id": "b", "text": "", "confidence": 0.0, "lines": [], "error": "no line"}


def test_predict_cli_over_pages_lines_and_broken_files(tmp_path, monkeypatch, tiny_teacher_kwargs):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    model = TeacherSystem(charset=SyntheticLines.charset, **tiny_teacher_kwargs)
    ckpt = save_cli_checkpoint(model, tmp_path / "tiny.ckpt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    page, _ = _page(5, seed=5)
    page.convert("RGB").save(inputs / "page.jpg")
    ImageOps.invert(SyntheticLines(1, split="val", seed=6)[0].load()).save(inputs / "dark_line.tif")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("L", (300, 300), 255).save(inputs / "blank.png")
    out = tmp_path / "out.jsonl"
    config = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "teacher_synthetic.yaml"
    # The config asks for another height: the data takes the checkpoint's, the one the network knows.
    cli = cli_main(["predict", "--config", str(config), f"--ckpt_path={ckpt}", "--data.height=48",
                    "--data.num_workers=2", "--data.batch_size=3", f"--data.predict_paths=[{inputs}]",
                    f"--output.path={out}", "--output.format=jsonl",
                    "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.datamodule.height == cli.model.hparams.height == model.hparams.height == 32
    rows = {Path(r["id"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == ["blank.png", "broken.png", "dark_line.tif", "page.jpg"]
    assert len(rows["page.jpg"]["lines"]) == 5
    boxes = [line["box"][1] for line in rows["page.jpg"]["lines"]]
    assert boxes == sorted(boxes)
    assert len(rows["dark_line.tif"]["lines"]) == 1
    assert "cannot read image" in rows["broken.png"]["error"]
    assert rows["blank.png"]["error"] == "no text line found"
    assert np.isclose(rows["page.jpg"]["confidence"],
                      np.mean([x["confidence"] for x in rows["page.jpg"]["lines"]]))


def test_predict_needs_only_the_checkpoint(tmp_path, monkeypatch, tiny_teacher_kwargs, recwarn):
    """No config, no dataset: the class, charset and input height come from the checkpoint."""
    charset = "adeinorst "  # not the synthetic alphabet that the data would default to
    torch.manual_seed(1)
    model = TeacherSystem(charset=charset, **tiny_teacher_kwargs)  # height 32, not the default 64
    ckpt = save_cli_checkpoint(model, tmp_path / "tiny.ckpt")
    image = tmp_path / "line.png"
    SyntheticLines(1, split="val", seed=3)[0].load().save(image)
    out = tmp_path / "out.jsonl"
    # as typed on the command line (sys.argv, no args)
    monkeypatch.setattr(sys, "argv", [
        "htr-lightning", "predict", f"--ckpt_path={ckpt}", f"--data.predict_paths=[{image}]",
        f"--output.path={out}", "--output.format=jsonl", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    cli = cli_main()
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
    assert type(cli.model) is TeacherSystem
    assert cli.model.hparams.charset == cli.datamodule.charset == charset
    assert cli.model.hparams.height == cli.datamodule.height == 32
    (row,) = map(json.loads, out.read_text().splitlines())
    expected = model.eval().transcribe(image)
    assert row["text"] == expected.text
    assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
