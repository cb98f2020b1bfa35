import json
import shutil
import subprocess
import sys

import pytest
from helpers_export import line_images, tiny_system

from htr_lightning.data.synthetic import SyntheticLines, compose_page
from htr_lightning.decoding import Hypothesis
from htr_lightning.inference.export import export_onnx
from htr_lightning.inference.runtime import OnnxRecognizer, sidecar_path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_system()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_runtime_transcribes_like_the_model(exported, tmp_path):
    model, path = exported
    lines = line_images()
    lines[0].save(tmp_path / "line.png")
    items = [tmp_path / "line.png", *lines[1:]]
    runtime = OnnxRecognizer(path, threads=1)
    got = runtime.transcribe(items, batch_size=4)
    ref = model.transcribe(items, batch_size=4)
    assert [h.text for h in got] == [h.text for h in ref]
    assert sum(bool(h.text) for h in got) >= 4
    assert [h.confidence for h in got] == pytest.approx([h.confidence for h in ref], abs=1e-4)
    single = runtime.transcribe(str(tmp_path / "line.png"))
    assert isinstance(single, Hypothesis) and single.text == ref[0].text


def test_runtime_splits_pages_like_the_model(exported):
    model, path = exported
    lines = [s.load() for s in SyntheticLines(5, split="test", seed=0, max_words=3)]
    page, _ = compose_page(lines, [15, 25, 20, 18], angle=1.0)
    assert page.width <= 1.5 * page.height  # "auto" splits it
    got = OnnxRecognizer(path, threads=1).transcribe(page)
    ref = model.transcribe(page)
    assert len(got.lines) == len(ref.lines) >= 2
    assert [x.text for x in got.lines] == [x.text for x in ref.lines]
    assert [x.box for x in got.lines] == [x.box for x in ref.lines]


def test_runtime_decodes_with_the_exported_decoder(exported, tmp_path):
    model, path = exported
    shutil.copy(path, tmp_path / "beam.onnx")
    meta = json.loads(sidecar_path(path).read_text())
    meta["decoder"] = {"name": "beam", "beam_size": 4}
    sidecar_path(tmp_path / "beam.onnx").write_text(json.dumps(meta))
    runtime = OnnxRecognizer(tmp_path / "beam.onnx")
    assert runtime.decoder.config()["beam_size"] == 4
    lines = line_images()
    model.set_decoder({"name": "beam", "beam_size": 4})
    try:
        expected = [h.text for h in model.transcribe(lines)]
        assert [h.text for h in runtime.transcribe(lines)] == expected
    finally:
        model.set_decoder("greedy")
    greedy = OnnxRecognizer(tmp_path / "beam.onnx", decoder="greedy")
    assert greedy.decoder.config() == {"name": "greedy"}


def test_runtime_needs_its_sidecar(exported, tmp_path):
    _, path = exported
    shutil.copy(path, tmp_path / "alone.onnx")
    with pytest.raises(FileNotFoundError, match="alone.json"):
        OnnxRecognizer(tmp_path / "alone.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRecognizer(tmp_path / "missing.onnx")


def test_runtime_imports_neither_lightning_nor_transformers():
    code = (
        "import sys\n"
        "import htr_lightning.inference.runtime\n"
        "heavy = ('lightning', 'pytorch_lightning', 'lightning_fabric', 'transformers',\n"
        "         'torchmetrics')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_data_package_attributes():
    import htr_lightning.data as data
    from htr_lightning.data.datamodule import HTRDataModule

    assert data.HTRDataModule is HTRDataModule and "HTRDataModule" in dir(data)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing  # noqa: B018
