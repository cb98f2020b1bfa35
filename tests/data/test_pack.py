import numpy as np
import pytest
from PIL import Image, ImageDraw

from fixtures_layouts import make_pagexml

from htr_lightning.data import HTRDataModule
from htr_lightning.data.pack import main, pack_lines, read_manifest
from htr_lightning.data.readers import read_folder, read_pagexml
from htr_lightning.data.samples import LineSample


def _line(size, ink_on_dark=False):
    paper, ink = (0, 255) if ink_on_dark else (255, 0)
    image = Image.new("L", size, paper)
    ImageDraw.Draw(image).rectangle((4, size[1] // 4, size[0] - 5, size[1] // 2), fill=ink)
    return image


def test_packed_split_reads_back_with_the_same_ids_and_texts_at_the_height(tmp_path):
    src = tmp_path / "src" / "train"
    (src / "sub").mkdir(parents=True)
    _line((300, 100)).save(src / "a.png")
    _line((90, 30), ink_on_dark=True).convert("RGB").save(src / "sub" / "b.jpg")
    (src / "a.txt").write_text("first line\n")
    (src / "sub" / "b.txt").write_text("zweite Zeile\n")
    Image.new("L", (10, 10)).save(src / "c.png")
    (src / "c.png").write_bytes(b"\x89PNG broken")
    (src / "c.txt").write_text("unreadable\n")

    main(["--dataset", "folder", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "packed"),
          "--height", "24", "--splits", "train"])
    original = {s.id: s.text for s in read_folder(tmp_path / "src", "train")}
    packed = read_folder(tmp_path / "packed", "train")
    assert {s.id: s.text for s in packed} == {k: v for k, v in original.items() if k != "c"}
    for sample in packed:
        image = sample.load()
        assert image.mode == "L" and image.height == 24
        pixels = np.asarray(image)
        assert pixels[1, 1] > 200 and pixels[9, image.width // 2] < 60  # dark ink, light paper
    assert {s.id: s.load().width for s in packed} == {"a": 72, "sub/b": 72}


def test_ids_that_would_leave_the_folder_are_refused(tmp_path):
    line = tmp_path / "x.png"
    _line((40, 20)).save(line)
    with pytest.raises(ValueError, match="outside"):
        pack_lines([LineSample("../escape", "t", str(line))], tmp_path / "out", 16)


def test_fewer_grey_levels_keep_paper_and_ink(tmp_path):
    line = tmp_path / "x.png"
    image = Image.fromarray(np.tile(np.linspace(0, 255, 200).astype(np.uint8), (20, 1)), "L")
    image.save(line)
    pack_lines([LineSample("x", "t", str(line))], tmp_path / "out", 20, levels=16)
    pixels = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert sorted(np.unique(pixels)) == [round(i * 17) for i in range(16)]
    assert pixels.min() == 0 and pixels.max() == 255


def test_pack_records_how_its_lines_were_cut_and_a_model_trained_on_them_knows(tmp_path,
                                                                              tiny_teacher_kwargs):
    import lightning.pytorch as pl

    from htr_lightning.models import TeacherSystem

    root = make_pagexml(tmp_path / "src")
    common = ["--dataset", "pagexml", "--root", str(root), "--height", "32", "--splits", "train", "val"]
    main([*common[:-2], "train", "--out", str(tmp_path / "plain")])
    main([*common[:-2], "val", "--out", str(tmp_path / "plain")])  # a later call adds its split
    main([*common, "--out", str(tmp_path / "straight"), "--reader_options", '{"rectify": true}'])
    manifest = read_manifest(tmp_path / "straight")
    train = read_folder(tmp_path / "straight", "train")
    assert manifest["reader_options"] == {"rectify": True} and manifest["height"] == 32
    assert manifest["lines"] == {"train": len(train), "val": 1} and len(train) > 1
    assert read_manifest(tmp_path / "plain")["reader_options"] == {}
    assert read_manifest(tmp_path / "plain")["lines"] == manifest["lines"]
    # the straightened cut, not the bounding box: other widths at the same height
    straight = {s.id: s.load().size for s in read_pagexml(root, "train", rectify=True, workers=1)}
    plain = {s.id: s.load().size for s in read_pagexml(root, "train", workers=1)}
    assert straight != plain
    assert {s.id: s.load().width for s in train} == {k: round(w * 32 / h) for k, (w, h) in straight.items()}

    assert not HTRDataModule(dataset="folder", root=str(tmp_path / "plain")).rectified_lines
    dm = HTRDataModule(dataset="folder", root=str(tmp_path / "straight"), height=32,
                       batch_size=4, augment=False)
    assert dm.rectified_lines
    dm.setup("fit")
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert TeacherSystem.load_from_checkpoint(tmp_path / "m.ckpt").rectified_lines is True


def test_a_broken_manifest_or_reader_options_are_named(tmp_path, capsys):
    (tmp_path / "pack.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="pack.json is not a pack manifest"):
        read_manifest(tmp_path)
    (tmp_path / "pack.json").write_text("{broken")
    with pytest.raises(ValueError, match="pack.json is not a pack manifest"):
        HTRDataModule(dataset="folder", root=str(tmp_path))  # at once, not at the first save
    assert read_manifest(tmp_path / "nothing here") is None
    with pytest.raises(SystemExit):
        main(["--dataset", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
              "--reader_options", "rectify"])
    assert "--reader_options: not JSON" in capsys.readouterr().err


def test_packing_into_a_folder_packed_another_way_is_refused(tmp_path, capsys):
    root = make_pagexml(tmp_path / "src")
    common = ["--dataset", "pagexml", "--root", str(root), "--out", str(tmp_path / "out")]
    main([*common, "--height", "32", "--splits", "val"])
    with pytest.raises(SystemExit):
        main([*common, "--height", "32", "--splits", "train", "--reader_options", '{"rectify": true}'])
    assert "packed with other reader_options ({}, not {'rectify': True})" in capsys.readouterr().err
    assert not (tmp_path / "out" / "train").exists()
    assert read_manifest(tmp_path / "out")["lines"] == {"val": 1}
