import pytest
import torch
from helpers_export import line_images, padded_batch, tiny_system
from tiny_systems import save_cli_checkpoint

from htr_lightning.cli import main
from htr_lightning.inference.export import load_bundle
from htr_lightning.inference.runtime import OnnxRecognizer, read_metadata, sidecar_path
from htr_lightning.models import StudentSystem, load_system


@pytest.fixture
def checkpoint(tmp_path):
    """A Lightning-style checkpoint of a tiny student, as ``htr-lightning fit`` writes it (the CLI
    stores the class path with the hyperparameters)."""
    return save_cli_checkpoint(tiny_system(StudentSystem), tmp_path / "tiny.ckpt")


def test_export_command_writes_onnx_and_bundle(checkpoint, tmp_path, capsys):
    model = load_system(checkpoint)
    assert type(model) is StudentSystem
    lines = line_images()
    expected = [h.text for h in model.transcribe(lines)]

    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx",
          "--output", str(tmp_path / "out" / "model.onnx")])
    assert "model.onnx" in capsys.readouterr().out
    onnx_path = tmp_path / "out" / "model.onnx"
    meta = read_metadata(sidecar_path(onnx_path))
    assert meta["class_path"] == "htr_lightning.models.student.StudentSystem"
    assert not any(k.startswith("_") for k in meta["hyperparameters"])
    assert [h.text for h in OnnxRecognizer(onnx_path).transcribe(lines)] == expected

    main(["export", "--ckpt_path", str(checkpoint), "--format", "safetensors",
          "--output", str(tmp_path / "bundle")])
    loaded = load_bundle(tmp_path / "bundle")
    images, widths = padded_batch([96, 40])
    with torch.inference_mode():
        assert torch.equal(loaded(images, widths)[0], model(images, widths)[0])
    assert [h.text for h in loaded.transcribe(lines)] == expected


def _error(args, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(["export", *args])
    assert done.value.code == 2
    return capsys.readouterr().err


def test_export_command_explains_bad_input(tmp_path, capsys, checkpoint):
    missing = tmp_path / "nowhere.ckpt"
    assert f"checkpoint not found: {missing}" in _error(
        ["--ckpt_path", str(missing), "--output", "m.onnx"], capsys)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    assert "notes.ckpt is not a PyTorch checkpoint" in _error(
        ["--ckpt_path", str(text), "--output", "m.onnx"], capsys)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert "other.pt is not a Lightning checkpoint of an htr_lightning model" in _error(
        ["--ckpt_path", str(other), "--output", "m.onnx"], capsys)
    assert "must name a .onnx file" in _error(
        ["--ckpt_path", str(checkpoint), "--output", str(tmp_path / "model")], capsys)
    assert "invalid choice: 'tflite'" in _error(
        ["--ckpt_path", str(checkpoint), "--format", "tflite", "--output", "m"], capsys)
