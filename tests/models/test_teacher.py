import logging
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from tiny_systems import RecordBatches, read_batches

from htr_lightning.data import HTRDataModule, WidthBucketSampler
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET, SyntheticLines
from htr_lightning.models import TeacherSystem
from htr_lightning.models.ctc_system import ctc_min_frames


def _trainer(tmp_path, **kw):
    defaults = dict(max_steps=3, limit_val_batches=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, accelerator="cpu", devices=1)
    return pl.Trainer(**{**defaults, **kw})


def test_one_batch_repeated_lowers_the_loss(tiny_teacher_kwargs, tiny_data_kwargs):
    torch.manual_seed(0)
    dm = HTRDataModule(**tiny_data_kwargs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.ctc_loss(*model(batch["images"], batch["widths"]), batch["texts"], batch["ids"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_infeasible_line_left_out_and_reported_once(tiny_teacher_kwargs, caplog):
    model = TeacherSystem("ab", **tiny_teacher_kwargs)
    images = torch.rand(2, 1, 32, 40)  # 10 frames each
    log_probs, lengths = model(images)
    with caplog.at_level(logging.WARNING, logger="htr_lightning.models"):
        loss_both = model.ctc_loss(log_probs, lengths, ["ab", "ab" * 20], ["ok", "long"])
        model.ctc_loss(log_probs, lengths, ["ab", "ab" * 20], ["ok", "long"])
        loss_one = model.ctc_loss(log_probs[:1], lengths[:1], ["ab"], ["ok"])
    assert torch.allclose(loss_both, loss_one)
    messages = [r.message for r in caplog.records if "long" in r.message]
    assert len(messages) == 1 and "does not fit in 10 frames" in messages[0]
    # repeated symbols need a blank between them: "aa" needs 3 frames, not 2
    assert model.ctc_loss(log_probs[:1, :2], torch.tensor([2]), ["aa"], ["rep"]) is None
    assert [ctc_min_frames(t) for t in ([], [1], [1, 1], [1, 2, 2, 2, 1])] == [0, 1, 3, 7]


def test_checkpoint_loads_alone_in_a_fresh_process(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    pl.seed_everything(0)
    dm = HTRDataModule(**tiny_data_kwargs)
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    trainer = _trainer(tmp_path, max_steps=5)
    trainer.fit(model, dm)
    ckpt = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(ckpt)
    image = tmp_path / "line.png"
    SyntheticLines(1, split="test", seed=3)[0].load().save(image)
    before = model.transcribe(image)
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["charset"] == SYNTHETIC_CHARSET
    code = (
        "import sys\n"
        "from htr_lightning.models import TeacherSystem\n"
        "m = TeacherSystem.load_from_checkpoint(sys.argv[1], map_location='cpu')\n"
        "h = m.transcribe(sys.argv[2])\n"
        "print(repr(h.text)); print(round(h.confidence, 5))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ckpt), str(image)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == repr(before.text)
    assert float(out[1]) == pytest.approx(before.confidence, abs=1e-4)


def test_bf16_mixed_precision_fit(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2)
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_ddp_spawn_fit_shards_batches_and_its_validation_equals_single_process(
        tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    # One spawn launch only: a second launch on the same trainer (fit, then validate) aborted a
    # worker once in CI (SIGABRT, no message, cause unknown); ddp_spawn *validate* of a checkpoint
    # is covered by tests/test_distributed.py. The fit's own validation runs under DDP at the end
    # of its one epoch, on the weights the spawn hands back to this process.
    pl.seed_everything(0)
    dm = HTRDataModule(**tiny_data_kwargs)
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    record = tmp_path / "batches.jsonl"
    ddp = _trainer(tmp_path, strategy="ddp_spawn", devices=2, max_steps=2, limit_train_batches=2,
                   limit_val_batches=1.0, callbacks=[RecordBatches(str(record))])
    ddp.fit(model, dm)
    # Each process trained its own share of the width-bucketed batches (Lightning kept our
    # sampler instead of wrapping it in a shuffling DistributedSampler of its own).
    dm.setup("fit")
    lengths = [len(s.text) for s in dm.samples("train")]
    for rank in (0, 1):
        share = WidthBucketSampler(lengths, dm.batch_size, seed=dm.seed, num_replicas=2, rank=rank)
        expected = [[dm.samples("train")[i].id for i in b] for b in share.batches()[:2]]
        assert list(read_batches(record, rank).values()) == expected
    # The trained weights came back from the workers.
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    multi = {k: float(v) for k, v in ddp.callback_metrics.items()}
    single = _trainer(tmp_path, limit_val_batches=1.0).validate(model, dm, verbose=False)[0]
    assert multi["val_cer"] == pytest.approx(single["val_cer"], abs=1e-6)
    assert multi["val_wer"] == pytest.approx(single["val_wer"], abs=1e-6)
    assert multi["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)


def test_validate_test_then_fit_then_validate_again(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs):
    # validate/test run in inference mode; the fit's validation does not. The metric sums must
    # survive every order (a validate before fit crashed the fit's first validation).
    dm = HTRDataModule(**tiny_data_kwargs)
    model = TeacherSystem(dm.charset, **tiny_teacher_kwargs)
    trainer = _trainer(tmp_path, max_steps=2, val_check_interval=2)
    first = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.fit(model, datamodule=dm)
    assert set(trainer.callback_metrics) >= {"val_cer", "val_loss", "train_loss"}
    again = _trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0]
    assert again["val_cer"] >= 0 and first["val_cer"] >= 0
    # the sums start afresh at each split: the same model on the same lines gives the same CER
    assert _trainer(tmp_path).validate(model, datamodule=dm, verbose=False)[0] == again
