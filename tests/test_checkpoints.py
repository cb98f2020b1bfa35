"""Checkpoint files: atomic writes, pickle refused unless the user opts in, last.ckpt kept fresh."""

import sys

import pytest
import torch

from htr_lightning.checkpoints import (SafeCheckpointIO, UnsafeCheckpointError, load_checkpoint_file,
                                      load_hyperparameters)
from htr_lightning.cli import cli_main
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET
from htr_lightning.inference.export import load_checkpoint as export_load_checkpoint
from htr_lightning.inference.export import main as export_main
from htr_lightning.models import TeacherSystem, load_system
from tiny_systems import TINY_TEACHER, save_cli_checkpoint


class Payload:
    """Anything torch.load(weights_only=True) cannot rebuild: unpickling it runs our code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    assert io.load_checkpoint(target)["global_step"] == 1

    real_save = torch.save

    def dies_halfway(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt  # e.g. the user's Ctrl-C while writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    io.save_checkpoint({"global_step": 3}, target)
    assert io.load_checkpoint(target)["global_step"] == 3


@pytest.fixture
def evil_checkpoint(tmp_path):
    """A genuine teacher checkpoint with one extra entry that needs pickle."""
    model = TeacherSystem(SYNTHETIC_CHARSET, **TINY_TEACHER)
    path = save_cli_checkpoint(model, tmp_path / "evil.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["payload"] = Payload()
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_that_needs_pickle_is_refused_by_every_loader(evil_checkpoint, capsys):
    loaders = [load_checkpoint_file, load_hyperparameters, load_system, TeacherSystem.load_from_checkpoint,
               export_load_checkpoint, SafeCheckpointIO().load_checkpoint]
    for load in loaders:
        with pytest.raises(UnsafeCheckpointError, match="evil.ckpt: refused to load") as err:
            load(evil_checkpoint)
        assert "weights_only=False" in str(err.value) and "Payload" not in capsys.readouterr().out
    assert "unpickled!" not in capsys.readouterr().out
    # The user's explicit opt-in loads it (and runs the payload, which is why it is opt-in).
    assert load_system(evil_checkpoint, weights_only=False).tokenizer.charset == SYNTHETIC_CHARSET
    assert "unpickled!" in capsys.readouterr().out


def test_cli_refuses_pickle_unless_weights_only_false(tmp_path, evil_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    args = ["validate", "--model=htr_lightning.models.TeacherSystem", "--data.height=32",
            '--data.synthetic_size={"train": 4, "val": 4, "test": 4}', "--data.batch_size=4",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", f"--ckpt_path={evil_checkpoint}"]
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        cli_main(args)
    assert "unpickled!" not in capsys.readouterr().out
    cli = cli_main([*args, "--weights_only=false"])
    assert "val_cer" in cli.trainer.callback_metrics


def test_export_cli_refuses_pickle_unless_weights_only_false(tmp_path, evil_checkpoint, capsys):
    args = [f"--ckpt_path={evil_checkpoint}", "--format=safetensors", f"--output={tmp_path / 'b'}"]
    with pytest.raises(SystemExit) as exit_info:
        export_main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "evil.ckpt: refused to load" in captured.err and "--weights_only false" in captured.err
    assert "unpickled!" not in captured.out and not (tmp_path / "b").exists()
    export_main([*args, "--weights_only", "false"])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "model.safetensors"]


def test_a_file_that_is_no_checkpoint_is_not_called_unsafe(tmp_path):
    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(Exception) as err:
        load_checkpoint_file(garbage)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_hyperparameters_are_read_alone_from_zip_and_legacy_files(tmp_path):
    model = TeacherSystem(SYNTHETIC_CHARSET, **TINY_TEACHER)
    path = save_cli_checkpoint(model, tmp_path / "teacher.ckpt")
    hparams = load_hyperparameters(path)
    assert hparams["_class_path"] == "htr_lightning.models.TeacherSystem"
    assert hparams["charset"] == SYNTHETIC_CHARSET
    # torch's legacy (non-zip) format cannot be memory-mapped: read in full instead.
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert load_hyperparameters(legacy) == hparams
    assert load_system(legacy).tokenizer.charset == SYNTHETIC_CHARSET
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    assert load_hyperparameters(tmp_path / "bare.ckpt") == {}
