"""Training on real handwriting (the Hooker letters of ../shared/data), when it is present.

Slow (about 3 minutes on 2 cores, most of it training): it runs in ``make test`` where the data
is, and skips elsewhere (see ``tests/shared_data.py`` for ``HTR_LIGHTNING_DATA``).
"""

import sys
import time
from pathlib import Path

import pytest
from shared_data import HOOKER

from htr_lightning.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "teacher_hooker_light.yaml"


@pytest.mark.slow
@pytest.mark.skipif(not HOOKER.is_dir(), reason=f"{HOOKER} is not present")
def test_teacher_learns_the_hooker_letters(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    started = time.perf_counter()
    cli = cli_main(run=False, args=[
        # 400 steps of the light teacher; measured here: validation CER 0.990 -> 0.723,
        # 154 s in all (cutting the lines included)
        "--config", str(CONFIG), f"--data.root={HOOKER}",
        f'--data.reader_options={{"cache_dir": "{tmp_path / "lines"}"}}',
        "--trainer.max_steps=400", "--trainer.limit_val_batches=4",  # 64 validation lines
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
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
