import math

import lightning.pytorch as pl
import pytest
import torch

from htr_lightning.data import HTRDataModule
from htr_lightning.models import StudentSystem, TeacherSystem, distillation_loss
from htr_lightning.nets import GatedCRNN
from htr_lightning.nets.gated_crnn import STUDENT_PRESET

TINY_STUDENT = dict(channels=[2, 4, 4, 4, 4], lstm_hidden=4)


def _trainer(tmp_path, **kw):
    return pl.Trainer(**{**dict(max_steps=2, limit_val_batches=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path), **kw})


@pytest.fixture
def teacher_ckpt(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    pl.seed_everything(0)
    dm = HTRDataModule(**tiny_data_kwargs)
    trainer = _trainer(tmp_path)
    trainer.fit(TeacherSystem(dm.charset, **tiny_teacher_kwargs), dm)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


def _student(dm, tiny_teacher_kwargs, **kw):
    return StudentSystem(dm.charset, **{**tiny_teacher_kwargs, **TINY_STUDENT, **kw})


def test_student_preset_is_at_most_40_percent_of_the_teacher():
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    teacher, student = count(GatedCRNN(80)), count(GatedCRNN(80, **STUDENT_PRESET))
    print(f"teacher {teacher:,} student {student:,} ({student / teacher:.1%})")
    assert student <= 0.40 * teacher


def test_distillation_term_by_hand_with_a_padded_frame():
    # One line, three frames, the third is padding; two classes; temperature 2.
    teacher = torch.log(torch.tensor([[[0.8, 0.2], [0.5, 0.5], [0.99, 0.01]]]))
    student = torch.log(torch.tensor([[[0.5, 0.5], [0.3, 0.7], [0.01, 0.99]]]))

    def soften(p, t):
        q = [x ** (1 / t) for x in p]
        return [x / sum(q) for x in q]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    frames = [kl(soften(t, 2), soften(s, 2)) for t, s in
              [((0.8, 0.2), (0.5, 0.5)), ((0.5, 0.5), (0.3, 0.7))]]
    expected = 4 * sum(frames) / 2
    got = distillation_loss(student, teacher, torch.tensor([2]), temperature=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # the padded frame (very different distributions) changes nothing
    assert float(distillation_loss(student, teacher, torch.tensor([3]), 2.0)) > 2 * expected
    assert float(distillation_loss(teacher, teacher, torch.tensor([3]), 2.0)) == pytest.approx(0, abs=1e-6)


def test_weight_zero_is_plain_ctc_training(tmp_path, teacher_ckpt, tiny_teacher_kwargs,
                                           tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    weights = []
    for kw in (dict(teacher_ckpt=str(teacher_ckpt), kd_weight=0.0), dict(teacher_ckpt=None)):
        pl.seed_everything(1)
        model = _student(dm, tiny_teacher_kwargs, dropout=0.0, **kw)
        _trainer(tmp_path, max_steps=3).fit(model, dm)
        assert model.teacher is None
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_distilled_fit_keeps_teacher_frozen_and_out_of_the_checkpoint(tmp_path, teacher_ckpt,
                                                                      tiny_teacher_kwargs,
                                                                      tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    model = _student(dm, tiny_teacher_kwargs, teacher_ckpt=str(teacher_ckpt), kd_weight=0.5)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(model, dm)
    teacher_before = TeacherSystem.load_from_checkpoint(teacher_ckpt).net.state_dict()
    assert not model.teacher.training
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())
    assert {"train_loss", "train_ctc", "train_kd"} <= set(trainer.callback_metrics)

    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = set(torch.load(ckpt, weights_only=True)["state_dict"])
    assert keys == set(_student(dm, tiny_teacher_kwargs).state_dict())
    teacher_ckpt.unlink()
    reloaded = StudentSystem.load_from_checkpoint(ckpt)
    assert reloaded.teacher is None
    image = dm.samples("test")[0].load()
    assert reloaded.transcribe(image).text == model.transcribe(image).text


def test_mismatched_frames_fail_at_start(tmp_path, teacher_ckpt, tiny_teacher_kwargs,
                                         tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    pools = [[2, 2], [2, 2], [2, 2], [2, 1], None]  # width / 8 against the teacher's / 4
    model = _student(dm, tiny_teacher_kwargs, teacher_ckpt=str(teacher_ckpt), pools=pools)
    with pytest.raises(ValueError, match="different frame counts"):
        _trainer(tmp_path).fit(model, dm)


def test_missing_teacher_file_named(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    model = _student(dm, tiny_teacher_kwargs, teacher_ckpt=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        _trainer(tmp_path).fit(model, dm)


@pytest.mark.parametrize("system", [TeacherSystem, StudentSystem])
def test_dropout_options_reach_the_network_and_leave_the_training_settings(system):
    model = system("abc ", feature_dropout=0.1, head_dropout=0.2, lr=3e-4, warmup=0.05,
                   scheduler="constant")
    assert (model.net.feature_dropout.p, model.net.head_dropout.p) == (0.1, 0.2)
    assert (model.hparams.lr, model.hparams.warmup, model.hparams.scheduler) == (3e-4, 0.05, "constant")
    # A checkpoint saved before these options existed has no such hyperparameters: they are off.
    old = {k: v for k, v in model.hparams.items() if k not in ("feature_dropout", "head_dropout")}
    restored = system(**old)
    assert (restored.net.feature_dropout.p, restored.net.head_dropout.p) == (0.0, 0.0)


def test_a_teacher_trained_on_other_cuts_of_the_lines_is_reported(tmp_path, teacher_ckpt, caplog,
                                                                   tiny_teacher_kwargs,
                                                                   tiny_data_kwargs):
    checkpoint = torch.load(teacher_ckpt, weights_only=True)
    assert checkpoint["htr_rectified_lines"] is False  # synthetic lines
    checkpoint["htr_rectified_lines"] = True  # as a teacher of straightened PAGE-XML lines
    torch.save(checkpoint, tmp_path / "straight.ckpt")
    dm = HTRDataModule(**tiny_data_kwargs)
    for ckpt in (teacher_ckpt, tmp_path / "straight.ckpt"):
        caplog.clear()
        _trainer(tmp_path, max_steps=1).fit(_student(dm, tiny_teacher_kwargs, teacher_ckpt=str(ckpt)), dm)
        warned = [r.getMessage() for r in caplog.records if "student's lines" in r.getMessage()]
        assert len(warned) == (ckpt != teacher_ckpt), warned
    assert "straight.ckpt trained on lines straightened along their baselines" in warned[0]
    assert "the student's lines are not straightened" in warned[0]
