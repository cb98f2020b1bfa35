"""Starting a run from another checkpoint's network weights (``--init.ckpt_path``)."""

import sys

import pytest
import torch

from htr_lightning.cli import cli_main
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET
from htr_lightning.models import StudentSystem, TeacherSystem
from tiny_systems import TINY_TEACHER, save_cli_checkpoint, tiny_teacher_cli_args


def _teacher(charset, seed, **overrides):
    torch.manual_seed(seed)
    return TeacherSystem(charset=charset, **{**TINY_TEACHER, **overrides})


def test_weights_are_taken_over_and_output_rows_matched_by_symbol(tmp_path):
    source = _teacher("abc ", seed=0)
    path = save_cli_checkpoint(source, tmp_path / "source.ckpt")
    target = _teacher("bcd ", seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}

    report = target.init_weights_from(path)

    assert report == {"kept": "bc ", "new": "d", "dropped": "a"}
    theirs, ours = source.state_dict(), target.state_dict()
    assert target._class_layers() == {"net.head"}
    for key, value in ours.items():
        if key.startswith("net.head."):
            continue
        assert torch.equal(value, theirs[key]), key
    for key in ("net.head.weight", "net.head.bias"):
        # our labels: blank, b, c, d, space; theirs: blank, a, b, c, space
        for mine, source_row in ((0, 0), (1, 2), (2, 3), (4, 4)):
            assert torch.equal(ours[key][mine], theirs[key][source_row]), (key, mine)
        assert torch.equal(ours[key][3], fresh[key][3])  # "d" keeps its fresh row
        assert not torch.equal(fresh[key][1], theirs[key][2])  # so the copy did something


def test_a_finer_width_pooling_starts_from_coarser_weights(tmp_path):
    # Pools have no weights: a 4-px-per-frame network can start from an 8-px one and then has
    # twice the frames for the same line (the README's advice for densely written lines).
    source = _teacher("abc ", seed=0, pools=[[2, 2], [2, 2], [2, 2], [2, 1], None])
    path = save_cli_checkpoint(source, tmp_path / "coarse.ckpt")
    target = _teacher("abc ", seed=1)  # TINY_TEACHER: [[2, 2], [2, 2], [2, 1], [2, 1], None]
    assert target.init_weights_from(path)["kept"] == "abc "
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    images = torch.rand(1, 1, 32, 80)
    assert source.eval()(images)[1].tolist() == [10] and target.eval()(images)[1].tolist() == [20]


def test_another_architecture_is_refused_naming_the_file(tmp_path):
    path = save_cli_checkpoint(_teacher("abc ", seed=0), tmp_path / "source.ckpt")
    target = _teacher("abc ", seed=1, lstm_hidden=16)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"source\.ckpt: its network is not this model's archi"):
        target.init_weights_from(path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    student = StudentSystem(charset="abc ", height=32)
    with pytest.raises(ValueError, match="tensors differ"):
        student.init_weights_from(path)


def test_a_checkpoint_without_charset_is_refused(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"plain\.ckpt: not a checkpoint of a CTC system"):
        _teacher("abc ", seed=0).init_weights_from(path)


def _fit(tmp_path, *extra):
    return cli_main([
        "fit", "--model=TeacherSystem", *tiny_teacher_cli_args(), "--data.dataset=synthetic",
        "--data.height=32", "--data.batch_size=4", "--data.num_workers=0",
        '--data.synthetic_size={"train": 8, "val": 4, "test": 4}',
        # lr 0: the step leaves the weights as the run started with them
        "--model.lr=0", "--model.weight_decay=0", "--model.scheduler=constant",
        "--trainer.max_steps=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        *extra])


def test_cli_fit_starts_from_the_checkpoint_and_a_resume_ignores_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    charset = SYNTHETIC_CHARSET.replace("Q", "") + "§"  # one symbol fewer, one unknown
    source = _teacher(charset, seed=3)
    path = save_cli_checkpoint(source, tmp_path / "pretrained.ckpt")

    cli = _fit(tmp_path / "a", f"--init.ckpt_path={path}")
    theirs, ours = source.state_dict(), cli.model.state_dict()
    assert torch.equal(ours["net.proj.weight"], theirs["net.proj.weight"])
    q = cli.model.hparams.charset.index("Q") + 1
    a_ours, a_theirs = cli.model.hparams.charset.index("a") + 1, charset.index("a") + 1
    assert torch.equal(ours["net.head.weight"][a_ours], theirs["net.head.weight"][a_theirs])
    assert not torch.equal(ours["net.head.weight"][q], theirs["net.head.weight"][q])

    scratch = _fit(tmp_path / "b")
    assert not torch.equal(scratch.model.state_dict()["net.proj.weight"], theirs["net.proj.weight"])
    resumed = _fit(tmp_path / "b", f"--init.ckpt_path={path}", "--trainer.max_steps=2",
                   f"--ckpt_path={tmp_path / 'b' / 'ckpt' / 'last.ckpt'}")
    assert torch.equal(resumed.model.state_dict()["net.proj.weight"],
                       scratch.model.state_dict()["net.proj.weight"])
