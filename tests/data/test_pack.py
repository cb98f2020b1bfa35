import numpy as np
import pytest
from PIL import Image, ImageDraw

from htr_lightning.data.pack import main, pack_lines
from htr_lightning.data.readers import read_folder
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
