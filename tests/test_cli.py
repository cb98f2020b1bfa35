import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from htr_lightning.analysis import main as analysis_main
from htr_lightning.cli import cli_main as main
from tiny_systems import SYNTHETIC_TEACHER_CONFIG, tiny_cli_args

pytestmark = pytest.mark.usefixtures("cli_argv")


def test_fit_then_validate_test_predict_from_checkpoint(tmp_path, capsys):
    ckpt_dir = tmp_path / "ckpt"
    main(["fit", *tiny_cli_args(tmp_path), "--trainer.max_steps=4", "--trainer.val_check_interval=2",
          "--trainer.precision=bf16-mixed", f"--output.path={tmp_path / 'fit_lines.jsonl'}"])
    assert not (tmp_path / "fit_lines.jsonl").exists()  # fit's validation writes no lines
    last = ckpt_dir / "last.ckpt"
    best = list(ckpt_dir.glob("best-*.ckpt"))
    assert last.is_file() and best, sorted(ckpt_dir.iterdir())
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert hparams["height"] == 32 and hparams["channels"] == [4, 8, 8, 8, 8]

    val = main(["validate", *tiny_cli_args(tmp_path), f"--ckpt_path={last}",
                f"--output.path={tmp_path / 'val.txt'}"])
    assert set(val.trainer.callback_metrics) >= {"val_cer", "val_wer", "val_loss"}
    assert len((tmp_path / "val.txt").read_text().splitlines()) == 8
    lines = tmp_path / "test_lines.jsonl"
    test = main(["test", *tiny_cli_args(tmp_path), f"--ckpt_path={best[0]}",
                 f"--output.path={lines}", "--output.format=jsonl"])
    assert 0.0 <= float(test.trainer.callback_metrics["test_cer"]) <= 10.0
    # one record per test line, whose error counts add up to the logged figures
    records = [json.loads(row) for row in lines.read_text().splitlines()]
    assert len(records) == 8 and len({r["id"] for r in records}) == 8
    assert all(r["reference"] and 0.0 <= r["confidence"] <= 1.0 for r in records)
    metrics = test.trainer.callback_metrics
    assert sum(r["char_errors"] for r in records) / sum(r["chars"] for r in records) == pytest.approx(
        float(metrics["test_cer"]), abs=1e-6)
    assert sum(r["word_errors"] for r in records) / sum(r["words"] for r in records) == pytest.approx(
        float(metrics["test_wer"]), abs=1e-6)
    assert test.model.decoder.name == "greedy"
    # the error analysis reads the same file: its rates are the logged ones
    capsys.readouterr()  # Lightning's results table
    analysis_main([str(lines), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["rates"]["cer"] == pytest.approx(float(metrics["test_cer"]), abs=1e-6)
    assert sum(report["edits"].values()) == sum(r["char_errors"] for r in records)
    beam = main(["test", *tiny_cli_args(tmp_path), f"--ckpt_path={best[0]}",
                 '--decoder={"name": "beam", "beam_size": 2}'])
    assert beam.model.decoder.config()["beam_size"] == 2
    assert "test_cer" in beam.trainer.callback_metrics

    images = tmp_path / "lines"
    images.mkdir()
    for i in range(3):
        Image.new("L", (120 + 30 * i, 40), 255).save(images / f"line{i}.png")
    out = tmp_path / "out.jsonl"
    main(["predict", *tiny_cli_args(tmp_path), f"--ckpt_path={last}", f"--data.predict_paths=[{images}]",
          f"--output.path={out}", "--output.format=jsonl"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["id"]).name for r in rows] == ["line0.png", "line1.png", "line2.png"]
    assert all(isinstance(r["text"], str) and 0.0 <= r["confidence"] <= 1.0 for r in rows)
    with pytest.raises(SystemExit, match=f"{out}, line 1: no reference.*not predict's"):
        analysis_main([str(out)])


def test_wrong_dataset_root_fails_at_start_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["fit", *tiny_cli_args(tmp_path), "--data.dataset=pagexml", f"--data.root={missing}"])


@pytest.mark.parametrize("config", sorted(SYNTHETIC_TEACHER_CONFIG.parent.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    assert "class_path: htr_lightning.models." in capsys.readouterr().out


def test_augmentation_settings_from_the_command_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(SYNTHETIC_TEACHER_CONFIG), "--data.augment", "{shear: 0.6, grid: 0}",
              "--print_config"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "augment:\n    shear: 0.6\n    grid: 0" in out, out[out.find("augment"):][:200]


def test_early_stopping_on_val_cer_and_no_validation_still_trains(tmp_path):
    frozen = ["--model.lr=0", "--model.weight_decay=0", "--model.scheduler=constant"]
    cli = main(["fit", *tiny_cli_args(tmp_path), *frozen, "--trainer.max_steps=-1",
                "--trainer.max_epochs=6", "--trainer.val_check_interval=1.0",
                "--trainer.check_val_every_n_epoch=1", "--early_stopping.patience=2"])
    stopper = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping")
    assert stopper.monitor == "val_cer"
    # val_cer never changes: best at epoch 0, no improvement at 1 and 2, stop after epoch 2
    assert stopper.stopped_epoch == 2 and cli.trainer.current_epoch == 3

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unvalidated = main(["fit", *tiny_cli_args(tmp_path / "b"), "--trainer.max_steps=2",
                            "--trainer.limit_val_batches=0"])
    assert unvalidated.trainer.global_step == 2
    # nothing to rank checkpoints by: no best checkpoint, no hint at a missing log call, and
    # last.ckpt still holds the final weights
    assert unvalidated.trainer.checkpoint_callback.save_top_k == 0
    assert not [w for w in caught if "could not find the monitored key" in str(w.message)]
    folder = Path(unvalidated.trainer.checkpoint_callback.dirpath)
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2


def test_each_process_writes_its_own_line_file(tmp_path):
    from types import SimpleNamespace

    from htr_lightning.cli import TranscriptionWriter

    writer = TranscriptionWriter(str(tmp_path / "lines.jsonl"), format="jsonl")
    writer.setup(SimpleNamespace(world_size=2, global_rank=1), None, "test")
    testing = SimpleNamespace(state=SimpleNamespace(fn="test"))
    writer.on_test_batch_end(testing, None, [{"id": "a", "text": "x"}], None, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["lines.jsonl.rank1"]
