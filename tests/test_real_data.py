"""Training on real handwriting (the Hooker letters of ../shared/data), when it is present.

Slow (about 3 minutes on 2 cores, most of it training): it runs in ``make test`` where the data
is, and skips elsewhere (see ``tests/shared_data.py`` for ``HTR_LIGHTNING_DATA``).
"""

import sys
import time

import pytest
from lightning.pytorch import LightningModule
from shared_data import HOOKER

from htr_lightning.cli import HTRLightningCLI
from htr_lightning.data.datamodule import HTRDataModule

# A light teacher (same class as the recipe's, 0.2 M parameters), 32 px high with 4 px of width
# per frame, sized so that 400 steps take about 2 minutes on 2 cores. Measured on this machine:
# validation CER 0.93 / 0.70 / 0.74 after 132 / 265 / 398 steps.
LIGHT_TEACHER = ["--model.channels=[16, 32, 48, 64, 64]",
                 "--model.pools=[[2, 2], [2, 2], [2, 1], [2, 1], null]",
                 "--model.lstm_hidden=64", "--model.lstm_layers=2", "--model.heads=1",
                 "--model.se_reduction=4"]


@pytest.mark.slow
@pytest.mark.skipif(not HOOKER.is_dir(), reason=f"{HOOKER} is not present")
def test_teacher_learns_the_hooker_letters(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    started = time.perf_counter()
    cli = HTRLightningCLI(LightningModule, HTRDataModule, subclass_mode_model=True, run=False, args=[
        "--seed_everything=0", "--model=htr_lightning.models.TeacherSystem", *LIGHT_TEACHER,
        "--model.lr=0.003", "--data.dataset=pagexml", f"--data.root={HOOKER}",
        f'--data.reader_options={{"cache_dir": "{tmp_path / "lines"}"}}', "--data.height=32",
        "--data.batch_size=16", "--data.augment=false", "--data.num_workers=1",
        "--trainer.max_steps=400", "--trainer.limit_val_batches=4",  # 64 validation lines
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=50", f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}"])
    assert len(cli.datamodule.charset) >= 70  # built from the train split's texts

    start = cli.trainer.validate(cli.model, datamodule=cli.datamodule)[0]["val_cer"]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    end = float(cli.trainer.callback_metrics["val_cer"])
    print(f"Hooker val CER (64 lines) {start:.3f} -> {end:.3f} after 400 steps, "
          f"{time.perf_counter() - started:.0f} s in all")
    assert start > 0.9  # an untrained model transcribes nothing right
    assert end < start - 0.15, (start, end)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
