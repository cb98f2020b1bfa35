import logging

import lightning.pytorch as pl
import yaml
from PIL import Image, ImageDraw, ImageFont

from htr_lightning.data import HTRDataModule
from htr_lightning.decoding.lm_cli import cut_as_trained, datamodule_from_config, main
from htr_lightning.decoding.ngram import CharNgramLM
from htr_lightning.models import TeacherSystem

TEXTS = ["the cat sat", "a cat ran", "the hat", "that cat", "at the mat", "cats sat"]


def _dataset(root):
    font = ImageFont.load_default(size=24)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        for i, text in enumerate(TEXTS):
            img = Image.new("L", (20 + 14 * len(text), 32), 255)
            ImageDraw.Draw(img).text((5, 2), text, fill=0, font=font)
            img.save(root / split / f"{i}.png")
            (root / split / f"{i}.txt").write_text(text)


def test_train_then_tune(tmp_path, tiny_teacher_kwargs, capsys):
    _dataset(tmp_path / "data")
    data = dict(dataset="folder", root=str(tmp_path / "data"), height=32, batch_size=3, augment=False)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"data": data}))

    arpa = tmp_path / "lm" / "char3.arpa"
    main(["train", "--config", str(config), "--order", "3", "--output", str(arpa)])
    lm = CharNgramLM.load(arpa)
    assert set(lm.vocab) >= set("".join(TEXTS))
    assert lm.score("the cat") > lm.score("tca eht")

    dm = HTRDataModule(**data)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(TeacherSystem(dm.charset, **tiny_teacher_kwargs), dm)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    capsys.readouterr()
    main(["tune", "--config", str(config), "--ckpt_path", str(ckpt), "--lm", str(arpa),
          "--beam", "4", "--weights", "0.5", "--bonuses", "0,1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("val: 6 lines, beam 4")
    rows = [line for line in out[2:] if "%" in line]
    assert [r[:34].strip() for r in rows] == [
        "greedy", "beam, no LM", "beam + LM w=0.5 bonus=0", "beam + LM w=0.5 bonus=1"]


def test_tune_cuts_pagexml_lines_as_the_model_trained(tmp_path, tiny_teacher_kwargs, caplog):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "pagexml", "root": str(tmp_path),
                                               "reader_options": {"cache_dir": "c"}}}))
    model = TeacherSystem("abc", **tiny_teacher_kwargs)
    model.rectified_lines = True

    dm = datamodule_from_config(config)
    with caplog.at_level(logging.WARNING, logger="htr_lightning"):
        cut_as_trained(dm, model)
    assert dm.reader_options == {"cache_dir": "c", "rectify": True}
    assert dm.rectified_lines and caplog.text == ""

    # --reader_options replaces the config's, and a cut set against the model's is reported.
    dm = datamodule_from_config(config, {"rectify": False})
    with caplog.at_level(logging.WARNING, logger="htr_lightning"):
        cut_as_trained(dm, model)
    assert dm.reader_options == {"rectify": False}
    assert ("trained on lines straightened along their baselines, and the lines it is tuned on "
            "are not straightened") in caplog.text

    model.rectified_lines = False
    caplog.clear()
    dm = datamodule_from_config(config)
    with caplog.at_level(logging.WARNING, logger="htr_lightning"):
        cut_as_trained(dm, model)
    assert dm.reader_options == {"cache_dir": "c", "rectify": False} and caplog.text == ""
