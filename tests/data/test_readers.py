"""Behaviour of the dataset readers on tiny datasets in the published layouts (and on Hooker)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from fixtures_layouts import (
    BENTHAM_TEST,
    BENTHAM_TRAIN,
    BENTHAM_VAL,
    PAGE_2019,
    PageLine,
    alto_xml,
    make_bentham,
    make_folder,
    make_iam,
    make_pagexml,
    page_image,
    page_xml,
    rect,
)
from shared_data import HOOKER

from htr_lightning.data import HTRDataModule, readers
from htr_lightning.data.readers import READERS, read_bentham, read_folder, read_iam, read_pagexml
from htr_lightning.data.samples import SkipReport
from htr_lightning.inference.pages import source_lines



def by_id(samples):
    return {s.id: s for s in samples}


def pixels(sample) -> np.ndarray:
    """The crop as an (H, W) uint8 array."""
    return np.asarray(sample.load().convert("L"))


def reported(report: SkipReport, reason: str) -> str:
    return " ".join(report.reasons().get(reason, []))


# ----------------------------------------------------------------------------------- registry


def test_registry_names_every_reader():
    assert READERS == {
        "folder": read_folder, "pagexml": read_pagexml, "bentham": read_bentham, "iam": read_iam
    }


@pytest.mark.parametrize("name", sorted(READERS))
def test_wrong_root_raises_naming_the_path(tmp_path, name):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        READERS[name](missing, "train")


@pytest.mark.parametrize(
    ("name", "make", "missing"),
    [
        ("folder", make_folder, "test"),
        ("pagexml", make_pagexml, "nope.lst"),
        ("bentham", make_bentham, "nope.lst"),
        ("iam", make_iam, "nope.lst"),
    ],
)
def test_missing_split_raises_naming_the_path(tmp_path, name, make, missing):
    root = make(tmp_path / "ds")
    spec = None if name == "folder" else missing
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        READERS[name](root, "test", split_spec=spec)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split"):
        read_folder(make_folder(tmp_path), "dev")


# ------------------------------------------------------------------------------------- folder


def test_folder_reads_pairs_and_reports_defects(tmp_path):
    root = make_folder(tmp_path)
    report = SkipReport("train")
    samples = read_folder(root, "train", report=report)
    assert [s.id for s in samples] == ["a", "f", "g", "sub/b"]
    texts = {s.id: s.text for s in samples}
    assert texts["a"] == "Hello world"
    assert texts["f"] == "café au lait"  # Latin-1 file decoded
    assert texts["g"] == "n\u00e9"  # NFD -> NFC
    assert "c.png" in reported(report, readers.NO_TEXT)
    assert "d.txt" in reported(report, readers.NO_IMAGE)
    assert "e.txt" in reported(report, readers.EMPTY_TEXT)
    assert "f.txt" in reported(report, readers.LATIN1_TEXT)
    assert all(s.load().size == (120, 32) for s in samples)


def test_folder_split_list_names_stems_inside_root(tmp_path):
    root = make_folder(tmp_path)
    report = SkipReport("val")
    samples = read_folder(root, "val", split_spec="lists/some.txt", report=report)
    assert [(s.id, s.text) for s in samples] == [
        ("train/a", "Hello world"), ("val/x", "validation")
    ]
    assert "train/missing" in reported(report, readers.NO_IMAGE)


def test_folder_logs_its_own_report_when_none_is_given(tmp_path, caplog):
    read_folder(make_folder(tmp_path), "train")
    assert "c.png" in caplog.text


# ------------------------------------------------------------------------------------ bentham


@pytest.mark.parametrize("at_parent", [True, False])
def test_bentham_splits_and_roots(tmp_path, at_parent):
    base = make_bentham(tmp_path)
    root = tmp_path if at_parent else base
    report = SkipReport("bentham")
    train = read_bentham(root, "train", report=report)
    val = read_bentham(root, "val", report=report)
    test = read_bentham(root, "test", report=report)
    assert [s.id for s in train] == BENTHAM_TRAIN[:2]
    assert [s.id for s in val] == BENTHAM_VAL[:1]
    assert [s.id for s in test] == BENTHAM_TEST
    assert train[0].text == f"text of {BENTHAM_TRAIN[0]}"
    assert f"{BENTHAM_VAL[1]}.png" in reported(report, readers.NO_IMAGE)
    assert f"{BENTHAM_TRAIN[2]}.txt" in reported(report, readers.EMPTY_TEXT)


def test_bentham_missing_layout_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Images/Lines"):
        read_bentham(tmp_path, "train")


# ---------------------------------------------------------------------------------------- iam


def test_iam_lines_split_by_form_and_line_ids(tmp_path):
    root = make_iam(tmp_path)
    report = SkipReport("iam")
    train = read_iam(root, "train", report=report)
    assert [s.id for s in train] == ["a01-000u-00", "a01-000u-01", "a01-000u-02", "a01-000x-00"]
    texts = {s.id: s.text for s in train}
    assert texts["a01-000u-00"] == "A MOVE to stop Mr. Gaitskell from"
    assert texts["a01-000x-00"] == '" Hello " , he said'
    assert train[0].path.endswith("lines/a01/a01-000u/a01-000u-00.png")
    assert train[0].load().size == (120, 32)
    val = read_iam(root, "val", report=report)
    assert [s.id for s in val] == ["b02-102-00"]  # b02-102-01's form is not listed
    assert "b02-102-99" in reported(report, readers.NOT_LISTED)
    assert read_iam(root, "test", report=report) == []
    assert "c03-003a-00.png" in reported(report, readers.NO_IMAGE)


def test_iam_skip_err(tmp_path):
    root = make_iam(tmp_path)
    report = SkipReport("iam")
    ids = [s.id for s in read_iam(root, "train", skip_err=True, report=report)]
    assert "a01-000u-02" not in ids and len(ids) == 3
    assert "a01-000u-02" in reported(report, readers.SEGMENTATION_ERR)


def test_iam_forms_cut_union_box_of_components(tmp_path):
    root = make_iam(tmp_path)
    report = SkipReport("iam")
    samples = read_iam(root, "train", source="forms", report=report)
    lines = by_id(samples)
    assert sorted(lines) == ["a01-000u-00", "a01-000u-01"]
    assert lines["a01-000u-00"].text == "A MOVE to stop Mr. Gaitskell from"
    assert lines["a01-000u-01"].text == 'nominating any more "Labour"'
    # components (100, 50, 80x40) and (200, 60, 120x50): union x 100..319, y 50..109
    crop = pixels(lines["a01-000u-00"])
    assert crop.shape == (60, 220)
    assert crop[0, 0] == 0 and crop[-1, -1] == 0  # corners of the two components are ink
    assert "a01-000x.xml" in reported(report, readers.NOT_LISTED)


# ------------------------------------------------------------------------------------ pagexml


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    root = make_pagexml(tmp_path_factory.mktemp("pagexml"))
    report = SkipReport("train")
    return by_id(read_pagexml(root, "train", report=report, workers=1)), report


def test_pagexml_ids_texts_and_reading_order(geo):
    lines, report = geo
    order = "l1 l2 l3 thin stray_x stray_y vertical triangle flat words own".split()
    assert list(lines) == [f"geo/{i}" for i in order]
    assert lines["geo/l1"].text == "first line"
    assert lines["geo/words"].text == "from words"  # no TextEquiv of its own: the words'
    assert lines["geo/own"].text == "own text"  # its own TextEquiv wins over stale words
    assert "line empty" in reported(report, readers.EMPTY_TEXT)
    assert "line flat_nobase" in reported(report, readers.BAD_POLYGON)
    assert all(s.path.endswith("geo.png") and s.image_bytes for s in lines.values())


def test_pagexml_crop_is_polygon_bbox_white_outside(geo):
    lines, _ = geo
    l1 = pixels(lines["geo/l1"])
    assert l1.shape == (41, 281)  # inclusive corners 20..300 x 20..60
    assert l1[15, 20] == 0 and l1[35, 5] == 200  # ink, paper
    triangle = pixels(lines["geo/triangle"])  # (340,100) (440,100) (440,140), no baseline
    assert triangle.shape == (41, 101)
    assert triangle[38, 2] == 255  # below the diagonal: outside, painted white
    assert triangle[2, 98] == 200  # inside: paper kept


def test_pagexml_thin_polygon_is_padded_to_the_baseline_band(geo):
    lines, _ = geo
    thin = pixels(lines["geo/thin"])  # polygon 8 px; band 30 above, 10 below baseline 230
    assert thin.shape == (41, 281)
    assert (thin[5:30, 30:81] == 0).all()  # the ink above the thin polygon is kept


def test_pagexml_thin_polygon_padded_also_without_pad_to_band(tmp_path):
    root = make_pagexml(tmp_path)
    lines = by_id(read_pagexml(root, "train", pad_to_band=False, workers=1))
    assert pixels(lines["geo/thin"]).shape == (41, 281)
    assert pixels(lines["geo/l1"]).shape == (41, 281)


def test_pagexml_stray_vertices_fall_back_to_the_band(geo):
    lines, _ = geo
    # band: baseline 30..290 padded by 0.1 x 40 px, 30 px above and 10 below
    assert pixels(lines["geo/stray_x"]).shape == (41, 269)
    assert pixels(lines["geo/stray_y"]).shape == (41, 269)
    assert pixels(lines["geo/flat"]).shape == (41, 269)  # degenerate polygon with a baseline


def test_pagexml_vertical_line_is_turned(geo):
    lines, _ = geo
    assert pixels(lines["geo/vertical"]).shape == (41, 281)


def test_pagexml_rectify_keeps_a_level_line_as_its_crop(tmp_path):
    root = make_pagexml(tmp_path)
    plain = by_id(read_pagexml(root, "train", workers=1))
    straight = by_id(read_pagexml(root, "train", rectify=True, workers=1))
    assert list(straight) == list(plain)
    # band 30 above and 10 below the baseline (30..290 at y 50), 4 px (0.1 x 40) beyond its
    # ends: page rows 20..59, columns 26..293, i.e. the bbox crop (x 20.., y 20..) shifted by 6
    l1 = pixels(straight["geo/l1"])
    assert l1.shape == (40, 268)
    assert np.abs(l1.astype(int) - pixels(plain["geo/l1"])[:40, 6:274]).max() <= 1
    # a line without a baseline is cropped as before
    assert np.array_equal(pixels(straight["geo/triangle"]), pixels(plain["geo/triangle"]))


SLOPE = 0.15  # about 8.5 degrees, as steep as the steepest Hooker test lines


def _sloped_page(root: Path, reverse: bool = False) -> Path:
    """One page with three parallel lines sloping up to the right, 60 px apart; the middle
    one's ink is a stroke 5 to 20 px above its baseline, its neighbours' ink reaches 8 px
    below theirs. Polygons run 30 px above and 10 below each baseline."""
    size = (700, 400)
    image = Image.new("L", size, 200)
    draw = ImageDraw.Draw(image)

    def y_at(start: float, x: float) -> float:
        return start - SLOPE * (x - 50)

    lines = []
    for name, start in (("above", 190), ("middle", 250), ("below", 310)):
        top, bottom = (-20, -5) if name == "middle" else (-20, 8)
        draw.polygon([(80, y_at(start, 80) + top), (620, y_at(start, 620) + top),
                      (620, y_at(start, 620) + bottom), (80, y_at(start, 80) + bottom)], fill=0)
        baseline = [(50, y_at(start, 50)), (350, y_at(start, 350)), (650, y_at(start, 650))]
        polygon = [(40, y_at(start, 40) - 30), (660, y_at(start, 660) - 30),
                   (660, y_at(start, 660) + 10), (40, y_at(start, 40) + 10)]
        lines.append(PageLine(name, polygon, baseline[::-1] if reverse else baseline, name))
    (root / "pages").mkdir(parents=True)
    image.save(root / "pages" / "s.png")
    (root / "pages" / "s.xml").write_text(page_xml("s.png", lines, size), encoding="utf-8")
    (root / "train.lst").write_text("s\n", encoding="utf-8")
    return root


def test_pagexml_rectify_straightens_a_sloping_line(tmp_path):
    root = _sloped_page(tmp_path / "ds")
    tilted = pixels(by_id(read_pagexml(root, "train", workers=1))["s/middle"])
    assert tilted.shape[0] > 120  # the bbox of a 40-px band rising 93 px
    strip = pixels(by_id(read_pagexml(root, "train", rectify=True, workers=1))["s/middle"])
    # 30 + 10 px high; the baseline's 600 px run at slope 0.15 is 606.7 px long, plus 4 at each end
    assert strip.shape == (40, 615)
    inner = strip[:, 40:-40]
    assert (inner[12:24] < 60).all()  # the stroke 5..20 px above the baseline fills its rows...
    assert (inner[:8] > 150).all() and (inner[28:] > 150).all()  # ...and nothing else is ink
    assert (strip[:, :20] > 150).all()  # paper before the stroke starts at x 80


def test_pagexml_rectify_reads_a_baseline_stored_right_to_left(tmp_path):
    forward = read_pagexml(_sloped_page(tmp_path / "a"), "train", rectify=True, workers=1)
    backward = read_pagexml(_sloped_page(tmp_path / "b", reverse=True), "train", rectify=True,
                            workers=1)
    assert [pixels(s).tolist() for s in backward] == [pixels(s).tolist() for s in forward]


def test_predict_cuts_pages_as_the_training_reader_options_say(tmp_path):
    root = _sloped_page(tmp_path / "ds")
    xml = str(root / "pages" / "s.xml")
    strips = [pixels(s) for s in read_pagexml(root, "train", rectify=True, workers=1)]
    assert [np.asarray(x.image).tolist() for x in source_lines(xml, rectify=True)] == \
        [strip.tolist() for strip in strips]
    for rectify, height in ((True, 40), (False, 64)):
        dm = HTRDataModule(dataset="pagexml", predict_paths=[xml], height=height,
                           reader_options={"rectify": rectify})
        dm.setup("predict")
        batch = next(iter(dm.predict_dataloader()))
        # straightened: 615 px at height 40; a bounding-box crop is over 120 px high, so at
        # height 64 it is far narrower than its 621 px
        widths = batch["widths"].tolist()
        assert (widths == [615] * 3) if rectify else all(w < 400 for w in widths)


def test_a_model_trained_on_straightened_lines_cuts_its_inputs_so(tmp_path, tiny_teacher_kwargs,
                                                                   monkeypatch, caplog):
    import lightning.pytorch as pl

    from htr_lightning.inference import pages
    from htr_lightning.inference.export import export_bundle, load_bundle
    from htr_lightning.models import TeacherSystem

    root = _sloped_page(tmp_path / "ds")
    (root / "val.lst").write_text("s\n", encoding="utf-8")
    (root / "test.lst").write_text("s\n", encoding="utf-8")
    xml = str(root / "pages" / "s.xml")
    dm = HTRDataModule(dataset="pagexml", root=str(root), height=32, batch_size=3, augment=False,
                       num_workers=0, reader_options={"rectify": True})
    dm.setup("fit")
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    assert model.rectified_lines is False  # until it trains on straightened lines
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = TeacherSystem.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.rectified_lines is True
    # evaluated on lines cut another way: reported, in test and validate alike
    for rectify, warned in ((True, 0), (False, 2)):
        data = HTRDataModule(dataset="pagexml", root=str(root), height=32, num_workers=0,
                             reader_options={"rectify": rectify})
        caplog.clear()
        evaluator = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        evaluator.test(loaded, datamodule=data, verbose=False)
        evaluator.validate(loaded, datamodule=data, verbose=False)
        messages = [r.getMessage() for r in caplog.records if "evaluated on" in r.getMessage()]
        assert len(messages) == warned, messages
    assert "trained on lines straightened along their baselines" in messages[0]

    cut = []  # how each PAGE-XML input was read
    read = pages.read_page_file
    monkeypatch.setattr(pages, "read_page_file",
                        lambda path, report=None, rectify=False: cut.append(rectify) or
                        read(path, report, rectify=rectify))
    loaded.transcribe(xml)  # as it trained
    loaded.transcribe(xml, rectify=False)  # unless told
    # predict with a config that does not say: as the model trained
    dm_predict = HTRDataModule(dataset="pagexml", predict_paths=[xml], height=32, num_workers=0)
    records = pl.Trainer(logger=False, enable_progress_bar=False).predict(loaded, datamodule=dm_predict)
    assert len(records[0]) == 3
    bundle = load_bundle(export_bundle(loaded, tmp_path / "bundle"))
    bundle.transcribe(xml)
    assert cut == [True, False, True, True]


def test_pagexml_image_fallback_ids_with_spaces_and_lookup_order(tmp_path):
    root = make_pagexml(tmp_path)
    val = read_pagexml(root, "val", workers=1)
    assert [(s.id, s.text) for s in val] == [("JDH (1)/r1l1", "Dec 21/95")]
    assert val[0].path.endswith("JDH (1).png")  # imageFilename said .jpg
    test = read_pagexml(root, "test", workers=1)
    assert [s.id for s in test] == ["alt/r1l1", "flat/r1l1"]


@pytest.mark.parametrize("namespace", [PAGE_2019, None])
def test_pagexml_any_namespace(tmp_path, namespace):
    root = make_pagexml(tmp_path, namespace=namespace)
    assert len(read_pagexml(root, "train", workers=1)) == 11


def _single_page(root: Path, image_name: str) -> None:
    """One page ``p`` with one line."""
    line = [PageLine("l1", rect(10, 10, 60, 30), [(12, 25), (58, 25)], "text")]
    (root / "pages").mkdir(parents=True, exist_ok=True)
    xml = page_xml(image_name, line, (100, 50))
    (root / "pages" / "p.xml").write_text(xml, encoding="utf-8")
    (root / "train.lst").write_text("p\n", encoding="utf-8")


def test_pagexml_missing_image_reported_with_file_name(tmp_path):
    root = tmp_path / "ds"
    _single_page(root, "scan_0001.jpg")
    report = SkipReport("train")
    assert read_pagexml(root, "train", report=report, workers=1) == []
    assert "scan_0001.jpg" in reported(report, readers.NO_IMAGE)


def test_pagexml_missing_xml_reported(tmp_path):
    root = make_pagexml(tmp_path)
    (root / "val.lst").write_text("JDH (1)\nghost\n", encoding="utf-8")
    report = SkipReport("val")
    assert len(read_pagexml(root, "val", report=report, workers=1)) == 1
    assert "ghost.xml" in reported(report, readers.NOT_LISTED)


def test_pagexml_cache_gives_identical_samples(tmp_path, monkeypatch):
    root = make_pagexml(tmp_path / "ds")
    cache = tmp_path / "cache"
    first_report, second_report = SkipReport("a"), SkipReport("b")
    first = read_pagexml(root, "train", cache_dir=str(cache), report=first_report, workers=2)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_cutting(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(readers.common, "_cut_page", no_cutting)
    second = read_pagexml(root, "train", cache_dir=str(cache), report=second_report, workers=2)
    assert second == first
    assert second_report.reasons() == first_report.reasons()  # skips found while cutting too
    monkeypatch.undo()
    # Changing the crop options or the XML gives a new entry instead of stale crops.
    read_pagexml(root, "train", cache_dir=str(cache), pad_to_band=False, workers=1)
    xml = root / "pages" / "geo.xml"
    os.utime(xml, ns=(xml.stat().st_atime_ns, xml.stat().st_mtime_ns + 10**9))
    read_pagexml(root, "train", cache_dir=str(cache), workers=1)
    assert len(list(cache.glob("*.npz"))) == 3
    read_pagexml(root, "train", cache_dir=str(cache), rectify=True, workers=1)
    assert len(list(cache.glob("*.npz"))) == 4


def test_pagexml_threads_give_the_same_result(tmp_path):
    root = make_pagexml(tmp_path)
    (root / "train.lst").write_text("geo\nJDH (1)\nflat\nalt\n", encoding="utf-8")
    assert read_pagexml(root, "train", workers=1) == read_pagexml(root, "train", workers=3)


def test_alto_lines(tmp_path):
    root = tmp_path / "ds"
    page_image(root / "pages" / "a.png", (300, 200), [])
    (root / "pages" / "a.xml").write_text(alto_xml("a.png"), encoding="utf-8")
    (root / "test.lst").write_text("a\n", encoding="utf-8")
    lines = by_id(read_pagexml(root, "test", pad_to_band=False, workers=1))
    assert {i: s.text for i, s in lines.items()} == {"a/tl1": "Alto line", "a/tl2": "box only"}
    assert pixels(lines["a/tl1"]).shape == (31, 101)
    assert pixels(lines["a/tl2"]).shape == (41, 151)


# --------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not HOOKER.is_dir(), reason=f"{HOOKER} is not present")
def test_hooker_val_split():
    report = SkipReport("val")
    samples = read_pagexml(HOOKER, "val", report=report)
    assert len(samples) == 434  # README: 434 val lines (3 more TextLines have empty text)
    assert report.count() == report.count(readers.EMPTY_TEXT) == 3
    assert len({s.id for s in samples}) == len(samples)
    for sample in samples:
        assert sample.text.strip() == sample.text and sample.text
        image = sample.load()
        assert image.mode == "L" and image.height >= 20 and image.width >= 20
