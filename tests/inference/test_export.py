import json

import onnx
import pytest
import torch
from helpers_export import CHARSET, line_images, padded_batch, tiny_system
from safetensors import safe_open

import htr_lightning
from htr_lightning.decoding import GreedyDecoder
from htr_lightning.inference.export import (
    export_bundle,
    export_metadata,
    export_onnx,
    load_bundle,
)
from htr_lightning.inference.runtime import OnnxRecognizer, read_metadata, sidecar_path
from htr_lightning.models import StudentSystem, TeacherSystem


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_system()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnx_file_is_valid_with_dynamic_batch_and_width(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    assert dims == {"images": ["batch", 1, 32, "width"], "widths": ["batch"],
                    "log_probs": ["batch", "frames", len(CHARSET) + 1], "lengths": ["batch"]}
    assert not list(path.parent.glob("*.data"))  # one self-contained file


@pytest.mark.parametrize("widths", [[128], [96, 40], [257, 256, 17, 130, 64], [520, 33]],
                         ids=lambda w: "x".join(map(str, w)))
def test_onnx_matches_pytorch(exported, widths):
    model, path = exported
    runtime = OnnxRecognizer(path)
    images, lengths_in = padded_batch(widths)
    with torch.inference_mode():
        ref, ref_lengths = model(images, lengths_in)
    got, lengths = runtime.forward(images, lengths_in)
    assert torch.equal(lengths, ref_lengths)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-4
    texts = [h.text for h in GreedyDecoder()(got, lengths, runtime.tokenizer)]
    assert texts == [h.text for h in model.decode(ref, ref_lengths)]
    assert any(texts)  # the tiny model's frames are not all blanks


def test_sidecar_holds_what_the_runtime_needs(exported):
    model, path = exported
    meta = read_metadata(sidecar_path(path))
    assert sidecar_path(path) == path.with_suffix(".json")
    assert meta["charset"] == CHARSET and meta["blank"] == 0
    assert meta["num_classes"] == len(CHARSET) + 1
    pre = meta["preprocessing"]
    assert (pre["height"], pre["fixed_width"], pre["max_width"], pre["min_width"],
            pre["width_multiple"]) == (32, None, 4096, 16, 32)
    assert meta["decoder"] == {"name": "greedy"}
    assert meta["class_path"] == "htr_lightning.models.teacher.TeacherSystem"
    assert meta["htr_lightning_version"] == htr_lightning.__version__
    assert meta["onnx"]["inputs"] == ["images", "widths"]
    assert meta["onnx"]["parity_max_abs_diff"] < 1e-4
    rebuilt = TeacherSystem(**meta["hyperparameters"])
    assert rebuilt.net.head.out_features == model.net.head.out_features
    assert rebuilt.hparams["channels"] == list(model.hparams["channels"])


def test_metadata_records_the_decoder_in_use():
    model = tiny_system()
    model.set_decoder({"name": "beam", "beam_size": 4})
    meta = export_metadata(model)
    assert meta["decoder"] == model.decoder.config() == meta["hyperparameters"]["decoder"]
    assert meta["decoder"]["beam_size"] == 4


def test_onnx_output_must_be_an_onnx_file(tmp_path):
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(tiny_system(), tmp_path / "model.bin")


def test_bundle_round_trip(tmp_path):
    model = tiny_system()
    model.set_decoder({"name": "beam", "beam_size": 3})
    directory = export_bundle(model, tmp_path / "bundle")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(directory / "model.safetensors"), "pt") as f:  # tensors only, no pickle
        assert set(f.keys()) == set(model.state_dict())
    loaded = load_bundle(directory)
    assert type(loaded) is TeacherSystem and not loaded.training
    assert loaded.decoder.config() == model.decoder.config()
    assert loaded.tokenizer.charset == CHARSET
    images, widths = padded_batch([96, 40])
    with torch.inference_mode():
        ref, ref_lengths = model(images, widths)
        got, lengths = loaded(images, widths)
    assert torch.equal(got, ref) and torch.equal(lengths, ref_lengths)
    lines = line_images()
    assert loaded.transcribe(lines) == model.transcribe(lines)


def test_student_bundle_rebuilds_the_student(tmp_path):
    model = tiny_system(StudentSystem, kd_weight=0.5)
    loaded = load_bundle(export_bundle(model, tmp_path / "bundle"))
    assert type(loaded) is StudentSystem and loaded.hparams["kd_weight"] == 0.5
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_bundle_only_builds_our_own_classes(tmp_path):
    directory = export_bundle(tiny_system(), tmp_path / "bundle")
    config = json.loads((directory / "config.json").read_text())
    for class_path in ("os.system", "torch.nn.Linear", "htr_lightning.models.CTCSystemX"):
        (directory / "config.json").write_text(json.dumps({**config, "class_path": class_path}))
        with pytest.raises(ValueError, match="not an htr_lightning CTC system"):
            load_bundle(directory)
    (directory / "config.json").write_text(json.dumps({"class_path": config["class_path"]}))
    with pytest.raises(ValueError, match="not htr_lightning export metadata"):
        load_bundle(directory)
