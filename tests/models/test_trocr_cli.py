import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from transformers import VisionEncoderDecoderModel

from htr_lightning.cli import cli_main as main
from htr_lightning.cli import main as command
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "trocr_tiny_synthetic.yaml"

pytestmark = pytest.mark.usefixtures("one_thread", "cli_argv")


def _common(tmp_path, pretrained):
    return ["--config", str(CONFIG), f"--model.pretrained={pretrained}", "--model.max_new_tokens=8",
            "--data.batch_size=4", "--data.num_workers=0",
            '--data.synthetic_size={"train": 8, "val": 4, "test": 4}',
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]


def test_cli_fits_tests_predicts_and_exports_with_the_tiny_config(tiny_trocr_dir, tmp_path, capsys):
    common = _common(tmp_path, tiny_trocr_dir)
    main(["fit", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    last = tmp_path / "ckpt" / "last.ckpt"
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == "htr_lightning.models.TrOCRSystem"
    assert hparams["height"] == 32 and hparams["charset"] == SYNTHETIC_CHARSET  # linked from data

    test = main(["test", *common, f"--ckpt_path={last}", '--decoder={"name": "beam", "beam_size": 2}'])
    assert test.model.model.generation_config.num_beams == 2
    assert {"test_cer", "test_wer", "test_loss"} <= set(test.trainer.callback_metrics)

    images = tmp_path / "lines"
    images.mkdir()
    for i in range(2):
        Image.new("L", (120 + 30 * i, 40), 255).save(images / f"line{i}.png")
    out = tmp_path / "out.jsonl"
    main(["predict", *common, f"--ckpt_path={last}", f"--data.predict_paths=[{images}]",
          f"--output.path={out}", "--output.format=jsonl"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["id"]).name for r in rows] == ["line0.png", "line1.png"]
    assert all(isinstance(r["text"], str) and 0.0 <= r["confidence"] <= 1.0 for r in rows)

    command(["export", "--ckpt_path", str(last), "--format", "transformers",
             "--output", str(tmp_path / "exported")])
    assert VisionEncoderDecoderModel.from_pretrained(tmp_path / "exported").generation_config.max_new_tokens == 8
    with pytest.raises(SystemExit):
        command(["export", "--ckpt_path", str(last), "--format", "onnx",
                 "--output", str(tmp_path / "model.onnx")])
    assert "holds a TrOCRSystem: use --format transformers" in capsys.readouterr().err
