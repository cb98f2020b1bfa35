"""Evaluation under DDP counts every line exactly once: the validation CER of two CPU processes
equals the single-process figure on the same checkpoint, also when the split does not divide
evenly across them (Lightning's default ``DistributedSampler`` pads it with repeated lines)."""

import json
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from tiny_systems import TINY_TEACHER, save_cli_checkpoint
from torch.utils.data import DistributedSampler, SequentialSampler

from htr_lightning.data.datamodule import HTRDataModule
from htr_lightning.metrics import ErrorRate
from htr_lightning.models import TeacherSystem

VAL_LINES = 7  # odd: two processes get 4 and 3 lines
BATCH = 3  # ragged last batch in both runs (3+3+1 in one process; 3+1 and 3 in two)


def _data(**kw):
    return HTRDataModule(**{**dict(dataset="synthetic", height=32, batch_size=BATCH, augment=False,
                                   synthetic_size={"train": 1, "val": VAL_LINES, "test": 5},
                                   reader_options={"max_words": 2}), **kw})


class LinesSeen(pl.Callback):
    """Writes, per process, the world size and the ids of the validation lines it evaluated."""

    def __init__(self, folder):
        self.folder = folder
        self.ids = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.ids += batch["ids"]

    def on_validation_epoch_end(self, trainer, pl_module):
        (self.folder / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "ids": self.ids}))


def _validate(ckpt, folder, **trainer_kw):
    folder.mkdir()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[LinesSeen(folder)], **trainer_kw)
    model = TeacherSystem.load_from_checkpoint(ckpt, map_location="cpu")
    (result,) = trainer.validate(model, datamodule=_data(), ckpt_path=ckpt)
    return result, [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fixed random tiny teacher: its CER is near but not exactly 1 and varies by line."""
    torch.manual_seed(1)
    model = TeacherSystem(_data().charset, **TINY_TEACHER)
    return save_cli_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _per_line_errors(ckpt):
    """(errors, reference length) of each validation line, decoded in this process."""
    model = TeacherSystem.load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = _data()
    data.setup("validate")
    rows = []
    with torch.inference_mode():
        for batch in data.val_dataloader():
            for hyp, text in zip(model.decode(*model(batch["images"], batch["widths"])), batch["texts"]):
                line = ErrorRate("char")
                line.update([hyp.text], [text])
                rows.append((int(line.errors), int(line.total)))
    return rows


def test_val_cer_under_two_processes_equals_single_process(checkpoint, tmp_path):
    rows = _per_line_errors(checkpoint)
    exact = sum(e for e, _ in rows) / sum(n for _, n in rows)
    # What Lightning's padding DistributedSampler would count: line 0 twice.
    padded_idx = [i for r in range(2) for i in DistributedSampler(range(VAL_LINES), 2, r, shuffle=False)]
    padded = sum(rows[i][0] for i in padded_idx) / sum(rows[i][1] for i in padded_idx)
    assert 0.0 < exact < 1.0 and abs(padded - exact) > 1e-3, (exact, padded)

    single, (seen,) = _validate(checkpoint, tmp_path / "single", devices=1)
    ddp, ranks = _validate(checkpoint, tmp_path / "ddp", devices=2, strategy="ddp_spawn")

    assert single["val_cer"] == pytest.approx(exact, abs=1e-6)
    assert ddp["val_cer"] == pytest.approx(single["val_cer"], abs=1e-6), (single, ddp, padded)
    # The loss is a mean over lines too (per-batch means weighted by lines, summed over ranks).
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    assert ddp["val_wer"] == pytest.approx(single["val_wer"], abs=1e-6)
    assert len(seen["ids"]) == VAL_LINES
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [len(r["ids"]) for r in ranks] == [4, 3]
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == sorted(seen["ids"])


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_loaders_share_a_split_without_repeats(split):
    """Both evaluation splits take the same path; checked on the loaders, without processes."""
    data = _data(synthetic_size={"train": 1, "val": 7, "test": 5})
    data.setup("validate" if split == "val" else "test")
    loader = getattr(data, f"{split}_dataloader")
    assert isinstance(loader().sampler, SequentialSampler)  # no trainer: one process
    data.trainer = SimpleNamespace(distributed_sampler_kwargs=None)
    assert isinstance(loader().sampler, SequentialSampler)  # a single-device strategy
    shares = []
    for rank in range(3):
        data.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 3, "rank": rank})
        shares.append(list(loader().sampler))
    assert sorted(i for share in shares for i in share) == list(range(len(data.samples(split))))
    assert max(map(len, shares)) - min(map(len, shares)) == 1


def test_split_smaller_than_the_process_count_is_refused():
    data = _data(synthetic_size={"train": 1, "val": 2, "test": 2})
    data.setup("validate")
    data.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 4, "rank": 0})
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        data.val_dataloader()
