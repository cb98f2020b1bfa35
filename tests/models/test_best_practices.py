import lightning.pytorch as pl
import pytest
import torch

from htr_lightning.data import HTRDataModule
from htr_lightning.models import BestPracticesSystem

# 32 px lines on a 32×128 canvas; one max-pool leaves 4 px of width per frame (32 frames).
TINY_BP = dict(height=32, fixed_width=128, cnn_cfg=[[1, 4], "M", [1, 8]], lstm_hidden=4,
               lstm_layers=2)


@pytest.fixture
def canvas_data(tiny_data_kwargs):
    return HTRDataModule(**{**tiny_data_kwargs, "fixed_width": 128})


def _trainer(tmp_path, **kw):
    return pl.Trainer(**{**dict(max_steps=3, limit_val_batches=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path), **kw})


def test_loss_is_ctc_plus_a_tenth_of_the_shortcut(canvas_data):
    torch.manual_seed(0)
    canvas_data.setup("fit")
    batch = next(iter(canvas_data.train_dataloader()))
    assert batch["images"].shape[-2:] == (32, 128)
    model = BestPracticesSystem(canvas_data.charset, **TINY_BP)
    outputs = model.training_forward(batch)
    losses = model.training_losses(batch, *outputs)
    assert set(losses) == {"loss", "ctc", "ctc_shortcut"}
    expected = losses["ctc"] + 0.1 * losses["ctc_shortcut"]
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["ctc_shortcut"] > 0 and torch.isfinite(losses["loss"])


def test_one_batch_repeated_lowers_the_loss(canvas_data):
    torch.manual_seed(0)
    canvas_data.setup("fit")
    batch = next(iter(canvas_data.train_dataloader()))
    model = BestPracticesSystem(canvas_data.charset, **TINY_BP, dropout=0.0, head_dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model.training_losses(batch, *model.training_forward(batch))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_fit_logs_both_terms_and_the_checkpoint_transcribes_on_the_canvas(tmp_path, canvas_data):
    pl.seed_everything(0)
    model = BestPracticesSystem(canvas_data.charset, **TINY_BP)
    trainer = _trainer(tmp_path, max_steps=4)  # one epoch of 16 lines, then validation
    trainer.fit(model, canvas_data)
    assert {"train_loss", "train_ctc", "train_ctc_shortcut", "val_cer"} <= set(trainer.callback_metrics)
    ckpt = tmp_path / "bp.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = BestPracticesSystem.load_from_checkpoint(ckpt)
    assert reloaded.preprocess.fixed_width == 128  # transcribe reads lines as training did
    image = canvas_data.samples("test")[0].load()
    assert reloaded.transcribe(image).text == model.eval().transcribe(image).text


def test_onnx_export_matches_pytorch_on_other_widths_and_batch_sizes(tmp_path):
    from htr_lightning.inference.export import export_onnx

    torch.manual_seed(0)
    model = BestPracticesSystem("abcdefgh ", **{**TINY_BP, "cnn_cfg": [[1, 4], "M", "mobilevit2", [1, 8]]})
    # export_onnx checks onnxruntime against PyTorch on padded batches the trace never saw and
    # raises when they differ by more than 1e-4
    path = export_onnx(model, tmp_path / "bp.onnx")
    assert path.is_file()
