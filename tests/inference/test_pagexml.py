"""PAGE-XML output of ``predict``: new documents for images, updated copies of PAGE/ALTO."""

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageOps
from tiny_systems import save_cli_checkpoint

from htr_lightning.cli import TranscriptionWriter, cli_main
from htr_lightning.data.readers.pagexml import read_page_file
from htr_lightning.data.synthetic import SyntheticLines, compose_page
from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.inference.pagexml import PAGE_NS, write_result, write_transcription
from htr_lightning.inference.pages import PageAssembler, prediction_records, source_lines
from htr_lightning.models import TeacherSystem, load_system
from htr_lightning.text import normalize_text

PAGE_2013 = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15"
ALTO_4 = "http://www.loc.gov/standards/alto/ns-v4#"

# Three lines: l0 with words, two TextEquivs and a TextStyle after them; one without an id;
# l2 without any TextEquiv, followed by UserDefined. The region has a TextEquiv of its own.
PAGE_IN = f"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="{PAGE_2013}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="{PAGE_2013} http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15/pagecontent.xsd">
  <Metadata><Creator>someone</Creator><Created>2020-01-01T00:00:00</Created><LastChange>2020-01-01T00:00:00</LastChange></Metadata>
  <Page imageFilename="p.png" imageWidth="400" imageHeight="200">
    <TextRegion id="r1" custom="keep me">
      <Coords points="10,10 390,10 390,190 10,190"/>
      <TextLine id="l0">
        <Coords points="20,20 380,20 380,60 20,60"/>
        <Baseline points="20,52 380,52"/>
        <Word id="w0"><Coords points="20,20 100,20 100,60 20,60"/><TextEquiv><Unicode>old</Unicode></TextEquiv></Word>
        <TextEquiv index="2"><Unicode>second</Unicode></TextEquiv>
        <TextEquiv index="1"><Unicode>first</Unicode></TextEquiv>
        <TextStyle fontSize="10"/>
      </TextLine>
      <TextLine>
        <Coords points="20,80 380,80 380,120 20,120"/>
        <TextEquiv><Unicode>no id</Unicode></TextEquiv>
      </TextLine>
      <TextLine id="l2">
        <Coords points="20,140 380,140 380,180 20,180"/>
        <UserDefined/>
      </TextLine>
      <TextEquiv><Unicode>old region text</Unicode></TextEquiv>
    </TextRegion>
  </Page>
</PcGts>
"""

ALTO_IN = f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ALTO_4}">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>p.png</fileName></sourceImageInformation>
  </Description>
  <Layout><Page ID="p1" WIDTH="400" HEIGHT="200">
    <PrintSpace><TextBlock ID="b1">
      <TextLine ID="tl1" HPOS="20" VPOS="20" WIDTH="361" HEIGHT="41" BASELINE="20,52 380,52">
        <Shape><Polygon POINTS="20,20 380,20 380,60 20,60"/></Shape>
        <String CONTENT="Old" HPOS="20" VPOS="20" WIDTH="40" HEIGHT="40"/><SP/>
        <String CONTENT="te" HPOS="70" VPOS="20" WIDTH="40" HEIGHT="40"/><HYP CONTENT="-"/>
      </TextLine>
      <TextLine ID="tl2" HPOS="20" VPOS="140" WIDTH="361" HEIGHT="41">
        <String CONTENT="box"/>
      </TextLine>
    </TextBlock></PrintSpace>
  </Page></Layout>
</alto>
"""


def _local(tag):
    return tag.rpartition("}")[2]


def _children(element, name):
    return [child for child in element if _local(child.tag) == name]


def _lines(root):
    return [e for e in root.iter() if _local(e.tag) == "TextLine"]


def _page_image(path):
    Image.new("L", (400, 200), 235).save(path)


def _result_for(xml, texts):
    """What predict assembles for ``xml`` when its lines are read as ``texts``."""
    lines = source_lines(xml)
    batch = {"ids": [f"{line.source}#{line.index}" for line in lines],
             "meta": [line.item(lambda image: (None, 0))["meta"] for line in lines]}
    pages = PageAssembler()
    results = [pages.add(r) for r in prediction_records(
        batch, [Hypothesis(t, 0.25 * (i + 1)) for i, t in enumerate(texts)])]
    return results[-1]


def test_page_xml_copy_holds_the_predictions_and_keeps_the_rest(tmp_path):
    _page_image(tmp_path / "p.png")
    source = tmp_path / "p.xml"
    source.write_text(PAGE_IN, encoding="utf-8")
    before = source.read_bytes()
    result = _result_for(source, ["alpha", "beta", "gamma"])
    assert [line["line_id"] for line in result["lines"]] == ["l0", "line1", "l2"]

    written = write_result(result, tmp_path / "out", set())

    assert written == tmp_path / "out" / "p.xml"
    assert source.read_bytes() == before
    text = written.read_text(encoding="utf-8")
    assert "ns0:" not in text and f'xmlns="{PAGE_2013}"' in text  # same default namespace
    root = ET.fromstring(written.read_bytes())
    lines = _lines(root)
    for line, expected, conf in zip(lines, ["alpha", "beta", "gamma"], ["0.2500", "0.5000", "0.7500"]):
        (equiv,) = _children(line, "TextEquiv")
        assert equiv.find(f"{{{PAGE_2013}}}Unicode").text == expected
        assert equiv.get("conf") == conf
    # schema order: TextEquiv after Word, before TextStyle / UserDefined
    assert [_local(c.tag) for c in lines[0]] == ["Coords", "Baseline", "Word", "TextEquiv", "TextStyle"]
    assert [_local(c.tag) for c in lines[2]] == ["Coords", "TextEquiv", "UserDefined"]
    word = _children(lines[0], "Word")[0]
    assert word.find(f".//{{{PAGE_2013}}}Unicode").text == "old"
    region = next(e for e in root.iter() if _local(e.tag) == "TextRegion")
    assert region.get("custom") == "keep me"
    (region_equiv,) = _children(region, "TextEquiv")
    assert region_equiv.find(f"{{{PAGE_2013}}}Unicode").text == "alpha\nbeta\ngamma"
    assert next(e for e in root.iter() if _local(e.tag) == "Creator").text == "someone"
    assert next(e for e in root.iter() if _local(e.tag) == "LastChange").text != "2020-01-01T00:00:00"
    # our reader takes the copy back (the image one folder up) with the predicted texts
    assert [s.text for s in read_page_file(written)] == ["alpha", "beta", "gamma"]


def test_the_input_and_earlier_outputs_are_never_overwritten(tmp_path, caplog):
    _page_image(tmp_path / "p.png")
    source = tmp_path / "p.xml"
    source.write_text(PAGE_IN, encoding="utf-8")
    before = source.read_bytes()
    result = _result_for(source, ["a", "b", "c"])
    taken = set()
    first = write_result(result, tmp_path, taken)  # the input's own folder
    second = write_result(result, tmp_path, taken)
    assert (first.name, second.name) == ("p_2.xml", "p_3.xml")
    assert source.read_bytes() == before
    assert "written as" in caplog.text and "p_2.xml" in caplog.text


def test_alto_copy_holds_one_string_per_predicted_line(tmp_path):
    _page_image(tmp_path / "p.png")
    source = tmp_path / "a.xml"
    source.write_text(ALTO_IN, encoding="utf-8")
    result = _result_for(source, ["new one", "two"])
    written = write_result(result, tmp_path / "out", set())
    root = ET.fromstring(written.read_bytes())
    lines = _lines(root)
    assert [[_local(c.tag) for c in line] for line in lines] == [["Shape", "String"], ["String"]]
    assert [line[-1].get("CONTENT") for line in lines] == ["new one", "two"]
    assert [line[-1].get("WC") for line in lines] == ["0.2500", "0.5000"]
    assert lines[0].get("BASELINE") == "20,52 380,52"
    assert [s.text for s in read_page_file(written)] == ["new one", "two"]


def test_pagexml_output_needs_a_folder(tmp_path):
    with pytest.raises(ValueError, match="--output.path to a folder"):
        TranscriptionWriter(format="pagexml")
    (tmp_path / "file.xml").write_text("x")
    with pytest.raises(ValueError, match="--output.path to a folder"):
        TranscriptionWriter(str(tmp_path / "file.xml"), format="pagexml")
    with pytest.raises(ValueError, match="txt, jsonl, pagexml"):
        TranscriptionWriter(format="alto")


def test_pagexml_output_is_refused_for_evaluation_and_skips_a_split_s_lines(tmp_path, caplog):
    """validate/test lines have references, not pages: refused before any work. predict on a
    dataset split (no pages either) warns once and writes nothing."""
    out = tmp_path / "out"
    writer = TranscriptionWriter(str(out), format="pagexml")
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    for stage in ("validate", "test"):
        with pytest.raises(ValueError, match=f"{stage}: output format pagexml is for predict"):
            writer.setup(trainer, None, stage)
    writer.setup(trainer, None, "fit")  # fit's validation writes nothing anyway
    writer.setup(trainer, None, "predict")
    for batch in range(2):
        lines = [{"id": f"{batch}-{i}", "text": "x", "confidence": 1.0} for i in range(2)]
        writer.on_predict_batch_end(trainer, None, lines, None, batch)
    assert caplog.text.count("are not written") == 1
    assert "lines of a dataset split (0-0, ...) are not written" in caplog.text
    assert not out.exists()


@pytest.mark.usefixtures("cli_argv")
def test_predict_writes_page_xml_for_images(tmp_path, tiny_teacher_kwargs, caplog):
    torch.manual_seed(0)
    model = TeacherSystem(charset=SyntheticLines.charset, **tiny_teacher_kwargs)
    ckpt = save_cli_checkpoint(model, tmp_path / "tiny.ckpt")
    inputs = tmp_path / "scans"
    inputs.mkdir()
    lines = [s.load() for s in SyntheticLines(4, split="test", seed=8, min_words=1, max_words=3)]
    page, _ = compose_page(lines, [20, 26, 18], angle=2.0)
    page.convert("RGB").save(inputs / "page.jpg")
    ImageOps.invert(SyntheticLines(1, split="val", seed=9)[0].load()).save(inputs / "line.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = inputs / "page"  # the layout PAGE tools use: XML in page/ beside the images
    config = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "teacher_synthetic.yaml"
    cli_main(["predict", "--config", str(config), f"--ckpt_path={ckpt}", "--data.height=32",
              "--data.num_workers=0", "--data.batch_size=3",
              f"--data.predict_paths=[{inputs}/page.jpg,{inputs}/line.png,{inputs}/broken.png]",
              f"--output.path={out}", "--output.format=pagexml",
              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])

    assert sorted(p.name for p in out.iterdir()) == ["line.xml", "page.xml"]
    assert "broken.png: no PAGE-XML written" in caplog.text
    expected = load_system(ckpt).eval().transcribe(inputs / "page.jpg")
    root = ET.fromstring((out / "page.xml").read_bytes())
    assert root.tag == f"{{{PAGE_NS}}}PcGts"
    page_element = next(e for e in root.iter() if _local(e.tag) == "Page")
    assert page_element.get("imageFilename") == "page.jpg"
    assert (page_element.get("imageWidth"), page_element.get("imageHeight")) == (
        str(page.width), str(page.height))
    xml_lines = _lines(root)
    assert len(xml_lines) == len(expected.lines) == 4
    for element, line in zip(xml_lines, expected.lines):
        coords = _children(element, "Coords")[0].get("points")
        assert coords == " ".join(f"{x},{y}" for x, y in line.polygon)
        (equiv,) = _children(element, "TextEquiv")
        assert (equiv.find(f"{{{PAGE_NS}}}Unicode").text or "") == line.text
        assert float(equiv.get("conf")) == pytest.approx(line.confidence, abs=1e-4)
    # read back as a dataset page: the image is found one folder up, the lines cut again
    back = read_page_file(out / "page.xml")
    assert [s.text for s in back] == [normalize_text(x.text) for x in expected.lines]
    single = _lines(ET.fromstring((out / "line.xml").read_bytes()))
    assert len(single) == 1


def test_a_notebook_transcription_writes_the_same_page_xml(tmp_path, tiny_teacher_kwargs):
    torch.manual_seed(0)
    model = TeacherSystem(charset=SyntheticLines.charset, **tiny_teacher_kwargs).eval()
    lines = [s.load() for s in SyntheticLines(3, split="test", seed=2, min_words=1, max_words=3)]
    page, _ = compose_page(lines, [22, 30], angle=-1.5)
    page.save(tmp_path / "page.png")
    transcription = model.transcribe(tmp_path / "page.png")
    written = write_transcription(transcription, tmp_path / "page.png", tmp_path / "page")
    root = ET.fromstring(written.read_bytes())
    xml_lines = _lines(root)
    assert len(xml_lines) == len(transcription.lines) == 3
    for element, line in zip(xml_lines, transcription.lines):
        assert _children(element, "Coords")[0].get("points") == " ".join(
            f"{x},{y}" for x, y in line.polygon)
        assert (element.find(f".//{{{PAGE_NS}}}Unicode").text or "") == line.text
    assert len(read_page_file(written)) == 3
