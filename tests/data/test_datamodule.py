import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from torch import nn

from htr_lightning.data import HTRDataModule, ResumableLoader
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET
from htr_lightning.models import TeacherSystem


def _folder_dataset(root, lines):
    for split, items in lines.items():
        (root / split).mkdir(parents=True)
        for name, text in items:
            Image.new("L", (40 + 8 * len(text), 32), 255).save(root / split / f"{name}.png")
            (root / split / f"{name}.txt").write_text(text, encoding="utf-8")


def test_charset_built_from_train_and_val_gaps_reported(tmp_path, caplog):
    _folder_dataset(tmp_path, {"train": [("a", "abc"), ("b", "cab d")],
                               "val": [("c", "abz"), ("d", "zz!")], "test": [("e", "abc")]})
    dm = HTRDataModule(dataset="folder", root=str(tmp_path), height=32)
    assert dm.charset == " abcd"
    with caplog.at_level("WARNING", logger="htr_lightning.data"):
        dm.setup("validate")
    assert dm.report_coverage("val") == {"z": 3, "!": 1}
    assert any("'z'×3" in r.message for r in caplog.records)


def test_synthetic_is_the_default_and_its_charset_is_fixed():
    dm = HTRDataModule(synthetic_size={"train": 4, "val": 2, "test": 2})
    assert dm.charset == SYNTHETIC_CHARSET
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["images"].shape[:3] == (2, 1, 64)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dataset="pagexml"), ValueError, "needs data.root"),
    (dict(dataset="nope", root="."), ValueError, "unknown dataset 'nope'"),
    (dict(dataset="folder", root="/no/such/dir"), FileNotFoundError, "/no/such/dir"),
    (dict(augment={"sheer": 0.5}), ValueError, r"unknown augmentation setting\(s\) \['sheer'\]"),
])
def test_bad_configuration_fails_at_start(kwargs, error, match):
    with pytest.raises(error, match=match):
        HTRDataModule(**kwargs)


def test_predicting_on_given_files_does_not_need_the_dataset(tmp_path):
    """A training config (whose root is on another machine) serves predict on scans as it
    is; only reading a split asks for the root."""
    Image.new("L", (60, 20), 255).save(tmp_path / "scan.png")
    dm = HTRDataModule(dataset="pagexml", root="/no/such/dir", charset="abc",
                       predict_paths=[str(tmp_path)])
    dm.setup("predict")
    assert [Path(s.path).name for s in dm.samples("predict")] == ["scan.png"]
    with pytest.raises(FileNotFoundError, match="/no/such/dir"):
        dm.setup("test")


def test_missing_split_folder_fails_at_setup_naming_it(tmp_path):
    _folder_dataset(tmp_path, {"train": [("a", "abc")]})
    dm = HTRDataModule(dataset="folder", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="val"):
        dm.setup("fit")


class _OwnCTCModel(pl.LightningModule):
    """A user's own model, written against the documented batch contract only."""

    def __init__(self, classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.out = nn.Linear(8 * 32, classes)
        self.charset = SYNTHETIC_CHARSET
        self.seen = 0
        self.validated = 0

    def training_step(self, batch, batch_idx):
        images, widths, texts = batch["images"], batch["widths"], batch["texts"]
        assert images.dtype == torch.float32 and images.shape[1:3] == (1, 32)
        assert widths.dtype == torch.long and len(texts) == images.shape[0] == len(batch["ids"])
        feats = torch.relu(self.conv(images)).permute(0, 3, 1, 2).flatten(2)  # (B, W, 8·H)
        log_probs = self.out(feats).log_softmax(-1).transpose(0, 1)
        targets = [torch.tensor([self.charset.index(c) + 1 for c in t]) for t in texts]
        loss = nn.functional.ctc_loss(log_probs, torch.cat(targets), widths,
                                      torch.tensor([len(t) for t in targets]), zero_infinity=True)
        self.seen += len(texts)
        return loss

    def validation_step(self, batch, batch_idx):
        assert batch["images"].shape[0] == len(batch["texts"]) == batch["widths"].shape[0]
        self.validated += len(batch["texts"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_own_lightning_module_trains_on_htr_datamodule(tmp_path, tiny_data_kwargs):
    dm = HTRDataModule(**tiny_data_kwargs)
    model = _OwnCTCModel(len(SYNTHETIC_CHARSET) + 1)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert model.seen == 12
    trainer.validate(model, dm, verbose=False)
    assert model.validated == 8


class _OwnDataModule(pl.LightningDataModule):
    """A user's own data: random ink on a 32-px canvas with the batch contract's keys."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        items = [{"images": torch.rand(2, 1, 32, 96, generator=g), "widths": torch.tensor([96, 80]),
                  "texts": ["ab", "ba a"], "ids": [f"{i}a", f"{i}b"]} for i in range(4)]
        return torch.utils.data.DataLoader(items, batch_size=None)

    def val_dataloader(self):
        return self.train_dataloader()


def test_teacher_trains_on_a_users_own_datamodule(tmp_path, tiny_teacher_kwargs):
    model = TeacherSystem(charset="ab ", scheduler="constant", **tiny_teacher_kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=_OwnDataModule())
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert 0.0 <= float(trainer.callback_metrics["val_cer"]) <= 5.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_batches_are_bucketed_or_random_and_always_resumable():
    spreads = {}
    for bucket in (True, False):
        dm = HTRDataModule(dataset="synthetic", height=32, batch_size=8, bucket_by_width=bucket,
                           synthetic_size={"train": 400, "val": 4, "test": 4})
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader, ResumableLoader)
        lengths = [len(s.text) for s in dm.samples("train")]
        batches = loader.sampler.batches()
        assert sorted(i for b in batches for i in b) == list(range(400))
        spreads[bucket] = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                              for b in batches) / len(batches)
    assert spreads[True] < spreads[False] / 3, spreads


def test_a_position_read_after_the_fits_loader_was_built_is_dropped_with_a_warning(caplog):
    dm = HTRDataModule(dataset="synthetic", height=32, batch_size=8,
                       synthetic_size={"train": 40, "val": 4, "test": 4})
    assert dm.state_dict() == {}  # nothing to save outside a fit
    dm.load_state_dict({"epoch": 3, "batches_done": 2})
    dm.setup("fit")
    first = dm.train_dataloader().sampler
    assert first.epoch == 3 and len(list(first)) == 40 - 2 * 8  # read before the loader: applied
    dm.load_state_dict({"epoch": 4, "batches_done": 1})
    assert "starts over from its first batch" in caplog.text
    assert dm.train_dataloader().sampler.epoch == 0  # not carried to a later loader
    dm.teardown("fit")  # the next fit with this data module reads its checkpoint's position
    dm.load_state_dict({"epoch": 4, "batches_done": 1})
    assert dm.train_dataloader().sampler.epoch == 4


def test_the_data_module_pickles_after_its_training_loader_ran():
    """ddp_spawn pickles the data module; a loader with live workers cannot be pickled."""
    dm = HTRDataModule(dataset="synthetic", height=32, batch_size=4, num_workers=1, augment=False,
                       synthetic_size={"train": 8, "val": 4, "test": 4})
    dm.setup("fit")
    loader = dm.train_dataloader()
    next(iter(loader))
    copy = pickle.loads(pickle.dumps(dm))
    assert copy.state_dict() == {} and len(copy.samples("train")) == 8


def test_augment_settings_reach_the_training_lines_only():
    dm = HTRDataModule(dataset="synthetic", height=32, batch_size=4, num_workers=0,
                       augment={"shear": 0.6, "morphology": 0},
                       synthetic_size={"train": 8, "val": 4, "test": 4})
    dm.setup("fit")
    train = dm.train_dataloader().dataset.augment
    assert (train.shear, train.morphology, train.rotation) == (0.6, 0, 1.0)
    assert dm.val_dataloader().dataset.augment is None
