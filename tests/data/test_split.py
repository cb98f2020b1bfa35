"""Split lists for collections without them (``python -m htr_lightning.data.split``)."""

import pytest
from fixtures_layouts import PageLine, line_image, page_image, page_xml, rect

from htr_lightning.data.datamodule import HTRDataModule
from htr_lightning.data.split import deal, group_names, main


def _collection(root, pages):
    """``root/pages/<id>.xml`` + ``.png``; ``pages`` maps page id -> number of lines, and a
    page given 0 lines gets one untranscribed line."""
    for page_id, count in pages.items():
        lines = [PageLine(f"l{i}", rect(10, 10 + 30 * i, 190, 35 + 30 * i),
                          [(12, 30 + 30 * i), (188, 30 + 30 * i)], f"{page_id} line {i}")
                 for i in range(count)] or [PageLine("l0", rect(10, 10, 190, 35), None, None)]
        size = (200, 40 + 30 * max(count, 1))
        page_image(root / "pages" / f"{page_id}.png", size, [])
        (root / "pages" / f"{page_id}.xml").write_text(page_xml(f"{page_id}.png", lines, size),
                                                       encoding="utf-8")
    return root


def _read(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_deal_fills_val_and_test_with_whole_groups():
    groups = {f"g{i:02d}": 1 + i % 5 for i in range(40)}  # 120 lines
    dealt = deal(groups, 0.1, 0.2, seed=3)
    assert sorted(sum(dealt.values(), [])) == sorted(groups)
    for split, fraction in (("val", 0.1), ("test", 0.2)):
        lines = sum(groups[g] for g in dealt[split])
        assert lines >= fraction * 120
        # no more than needed: without its largest group the split would fall short
        assert lines - max(groups[g] for g in dealt[split]) < fraction * 120
    assert dealt == deal(groups, 0.1, 0.2, seed=3)
    assert dealt != deal(groups, 0.1, 0.2, seed=4)
    assert deal({"a": 5, "b": 1, "c": 1}, 0.0, 0.5)["val"] == []


@pytest.mark.parametrize("val,test,message", [
    (0.6, 0.5, "sum below 1"), (-0.1, 0.1, "fractions"), (0.1, 0.1, "cannot fill 3 splits")])
def test_deal_refuses_what_cannot_be_split(val, test, message):
    with pytest.raises(ValueError, match=message):
        deal({"a": 3, "b": 4}, val, test)


def test_group_names_by_pattern():
    names = {"JDH_2_16_157_001": 3, "JDH_2_16_157_002": 2, "JDH_2_16_160_001": 4, "odd": 1}
    groups, members = group_names(names, r"^(.*)_\d+$")
    assert groups == {"JDH_2_16_157": 5, "JDH_2_16_160": 4, "odd": 1}
    assert members["JDH_2_16_157"] == ["JDH_2_16_157_001", "JDH_2_16_157_002"]
    assert group_names(names, None)[0] == names


def test_pagexml_lists_train_the_datamodule(tmp_path, capsys):
    pages = {f"letter{n}_{p}": 2 + (n + p) % 3 for n in range(6) for p in range(2)}
    root = _collection(tmp_path / "coll", {**pages, "blank_page": 0})
    main(["--dataset", "pagexml", "--root", str(root), "--val", "0.15", "--test", "0.15",
          "--group_by", r"^(letter\d+)_"])
    lists = {split: _read(root / f"{split}.lst") for split in ("train", "val", "test")}
    assert sorted(sum(lists.values(), [])) == sorted(pages)  # the blank page is left out
    letters = {split: {page.split("_")[0] for page in ids} for split, ids in lists.items()}
    assert not (letters["train"] & letters["val"] or letters["train"] & letters["test"]
                or letters["val"] & letters["test"])
    out = capsys.readouterr().out
    assert "train:" in out and "val:" in out and "test:" in out
    data = HTRDataModule(dataset="pagexml", root=str(root), height=32)
    read = {split: data.samples(split) for split in ("train", "val", "test")}
    assert sum(len(s) for s in read.values()) == sum(pages.values())
    assert {s.id.split("/")[0] for s in read["val"]} == set(lists["val"])

    before = {split: _read(root / f"{split}.lst") for split in lists}
    with pytest.raises(SystemExit):
        main(["--dataset", "pagexml", "--root", str(root), "--seed", "1"])
    assert "already exist" in capsys.readouterr().err
    assert {split: _read(root / f"{split}.lst") for split in lists} == before
    main(["--dataset", "pagexml", "--root", str(root), "--seed", "1", "--force"])
    assert {split: _read(root / f"{split}.lst") for split in lists} != before


def test_folder_lists_go_to_data_splits(tmp_path, capsys):
    root = tmp_path / "lines"
    for folder in range(5):
        for n in range(4):
            stem = root / f"page{folder}" / f"l{n}"
            line_image(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(f"text {folder} {n}", encoding="utf-8")
    out = tmp_path / "lists"
    main(["--dataset", "folder", "--root", str(root), "--val", "0.2", "--test", "0.2",
          "--group_by", "^(.*)/", "--out", str(out)])
    assert "--data.splits" in capsys.readouterr().out
    lists = {split: _read(out / f"{split}.lst") for split in ("train", "val", "test")}
    assert sorted(sum(lists.values(), [])) == sorted(f"page{f}/l{n}" for f in range(5) for n in range(4))
    folders = {split: {name.split("/")[0] for name in names} for split, names in lists.items()}
    assert [len(folders[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    data = HTRDataModule(dataset="folder", root=str(root), height=32,
                         splits={split: str(out / f"{split}.lst") for split in lists})
    assert [s.id for s in data.samples("val")] == lists["val"]
    assert data.samples("test")[0].text.startswith("text ")
