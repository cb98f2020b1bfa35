import logging

import pytest
import torch
from PIL import Image
from trocr_helpers import IMAGE_SIZE, datamodule, first_batch, make_tiny_trocr, trainer
from transformers import TrOCRProcessor, VisionEncoderDecoderModel

from htr_lightning.data.synthetic import SYNTHETIC_CHARSET
from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.models import TrOCRSystem, load_system

pytestmark = pytest.mark.usefixtures("one_thread")


def _system(path, **kw) -> TrOCRSystem:
    return TrOCRSystem(str(path), charset=SYNTHETIC_CHARSET, height=IMAGE_SIZE[0],
                       **{"max_new_tokens": 48, "lr": 1e-3, "scheduler": "constant", **kw})


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters()}


def _changed(before, model) -> set[str]:
    return {n for n, p in model.model.named_parameters() if not torch.equal(before[n], p.detach())}


def _trained(model) -> set[str]:
    return {n for n, p in model.model.named_parameters() if p.requires_grad}


def _logits(model, batch):
    """Teacher-forced logits of a batch (eval mode)."""
    model.eval()
    labels = model.encode_labels(batch["texts"])
    with torch.no_grad():
        return model(model.pixel_values(batch["images"], batch["widths"]), labels).logits


def _fit_and_save(model, root, tmp_path, steps=3):
    fit = trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    fit.fit(model, datamodule(root))
    ckpt = tmp_path / "model.ckpt"
    fit.save_checkpoint(ckpt)
    return ckpt


# The last encoder layer under transformers 5 and 4 names, then ViT's final layer norm.
LAST_ENCODER_LAYER = ("encoder.layers.1.", "encoder.encoder.layer.1.", "encoder.layernorm.")


def test_lora_trains_and_saves_exactly_the_adapters(pretrained_trocr, tmp_path):
    names = {n for n, _ in _system(pretrained_trocr.dir, lora={"r": 2}).model.named_parameters()}
    adapters = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    # 2 decoder layers × (self + cross attention) × (q, k, v, out) × (A, B)
    assert len(adapters) == 32 and all(n.startswith("decoder.") for n in adapters)
    # the encoder trains as its own options say: fully by default, its last layer here ...
    model = _system(pretrained_trocr.dir, lora={"r": 2}, train_last_encoder_layers=1)
    assert _trained(model) == adapters | {n for n in names if n.startswith(LAST_ENCODER_LAYER)}
    # ... and not at all with freeze_encoder: then exactly the adapters train and are saved
    model = _system(pretrained_trocr.dir, lora={"r": 2}, freeze_encoder=True)
    trained = _trained(model)
    assert trained == adapters
    before = _snapshot(model)
    ckpt = _fit_and_save(model, pretrained_trocr.root, tmp_path)
    assert _changed(before, model) == trained
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(state) == {f"model.{n}" for n in trained}

    batch = first_batch(pretrained_trocr.root)
    expected = _logits(model, batch)
    for loaded in (TrOCRSystem.load_from_checkpoint(ckpt), load_system(ckpt)):
        assert type(loaded) is TrOCRSystem and loaded.hparams.lora == {"r": 2} and loaded.hparams.freeze_encoder
        torch.testing.assert_close(_logits(loaded, batch), expected)

    # export: adapters merged into a plain transformers model with our generation settings
    out = model.export_pretrained(tmp_path / "merged")
    plain = VisionEncoderDecoderModel.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    pixels = model.pixel_values(batch["images"], batch["widths"])
    labels = model.encode_labels(batch["texts"])
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values=pixels, labels=labels).logits, expected,
                                   rtol=1e-4, atol=1e-5)
        texts = TrOCRProcessor.from_pretrained(out).batch_decode(plain.generate(pixels), skip_special_tokens=True)
    assert plain.generation_config.max_new_tokens == 48
    assert texts == [h.text for h in model.generate(pixels)]
    # the export is itself a valid starting point
    assert _system(out).tokens == model.tokens


def test_last_layers_train_and_are_saved_alone(pretrained_trocr, tmp_path):
    model = _system(pretrained_trocr.dir, train_last_encoder_layers=1, train_last_decoder_layers=1)
    names = {n for n, _ in model.model.named_parameters()}
    expected = {n for n in names if n.startswith((*LAST_ENCODER_LAYER, "decoder.model.decoder.layers.1."))}
    assert _trained(model) == expected
    before = _snapshot(model)
    ckpt = _fit_and_save(model, pretrained_trocr.root, tmp_path)
    assert _changed(before, model) == expected
    assert set(torch.load(ckpt, weights_only=True)["state_dict"]) == {f"model.{n}" for n in expected}
    batch = first_batch(pretrained_trocr.root)
    torch.testing.assert_close(_logits(load_system(ckpt), batch), _logits(model, batch))


def test_frozen_encoder_is_neither_trained_nor_saved(pretrained_trocr, tmp_path):
    model = _system(pretrained_trocr.dir, freeze_encoder=True)
    decoder = {n for n, _ in model.model.named_parameters() if n.startswith("decoder.")}
    assert _trained(model) == decoder
    before = _snapshot(model)
    ckpt = _fit_and_save(model, pretrained_trocr.root, tmp_path, steps=2)
    assert _changed(before, model) == decoder
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and not any(k.startswith("model.encoder.") for k in state)
    # both names of the tied output layer / token embeddings are kept
    assert {"model.decoder.output_projection.weight",
            "model.decoder.model.decoder.embed_tokens.weight"} <= set(state)


def test_checkpoint_loads_alone_and_refuses_another_base(pretrained_trocr, tmp_path):
    base = tmp_path / "base"
    make_tiny_trocr.save_tiny_trocr(base, SYNTHETIC_CHARSET, IMAGE_SIZE)
    model = _system(base, freeze_encoder=True)
    ckpt = _fit_and_save(model, pretrained_trocr.root, tmp_path, steps=1)
    batch = first_batch(pretrained_trocr.root)
    torch.testing.assert_close(_logits(TrOCRSystem.load_from_checkpoint(ckpt), batch), _logits(model, batch))
    # the checkpoint holds only the decoder; a different encoder at `pretrained` is refused
    make_tiny_trocr.save_tiny_trocr(base, SYNTHETIC_CHARSET, IMAGE_SIZE, seed=1)
    with pytest.raises(ValueError, match="not those this checkpoint was trained on"):
        TrOCRSystem.load_from_checkpoint(ckpt)


def test_contradictory_or_empty_options_are_refused(tiny_trocr_dir):
    with pytest.raises(ValueError, match="contradict"):
        _system(tiny_trocr_dir, freeze_encoder=True, train_last_encoder_layers=1)
    with pytest.raises(ValueError, match="train_last_decoder_layers must be unset"):
        _system(tiny_trocr_dir, lora={}, train_last_decoder_layers=1)
    with pytest.raises(ValueError, match=r"train_last_encoder_layers=3: .* has 2 layers"):
        _system(tiny_trocr_dir, train_last_encoder_layers=3)


@pytest.mark.parametrize("lora", [None, {"r": 2}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_trocr_dir, lora):
    pixels = torch.randn(2, 3, *IMAGE_SIZE)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = _system(tiny_trocr_dir, lora=lora, gradient_checkpointing=checkpointing)
        assert model.model.is_activation_checkpointing == checkpointing
        model(pixels, model.encode_labels(["abc", "de"])).loss.backward()
        grads.append({n: p.grad for n, p in model.model.named_parameters() if p.requires_grad})
    assert all(g is not None for g in grads[1].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_8bit_adamw_falls_back_to_adamw_on_cpu_with_a_message(tiny_trocr_dir, caplog):
    model = _system(tiny_trocr_dir, optimizer="adamw8bit")
    with caplog.at_level(logging.WARNING, logger="htr_lightning.models"):
        opt = model.configure_optimizers()
    assert type(opt) is torch.optim.AdamW
    assert any("needs a CUDA device" in r.message and "torch.optim.AdamW" in r.message for r in caplog.records)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] > 0 and opt.param_groups[1]["weight_decay"] == 0
    assert all(p.ndim > 1 for p in model.parameters() if id(p) in decay)


def test_batch_conversion_matches_the_image_processor(pretrained_trocr, tiny_trocr_dir):
    model = _system(tiny_trocr_dir)
    processor = TrOCRProcessor.from_pretrained(tiny_trocr_dir).image_processor
    preprocess = LinePreprocessor(height=IMAGE_SIZE[0])
    for path in sorted((pretrained_trocr.root / "lines").glob("*.png")):
        image = Image.open(path)
        tensor, width = preprocess(image)
        ours = model.pixel_values(tensor[None], torch.tensor([width]))
        theirs = processor(image.convert("RGB"), return_tensors="pt").pixel_values
        assert ours.shape == theirs.shape == (1, 3, *IMAGE_SIZE)
        # values span [-1, 1]; 0.05 is 6 grey levels of 255 (two resizes instead of one,
        # no 8-bit rounding in between)
        assert (ours - theirs).abs().mean() < 0.05, path.name


def test_beam_search_predict_and_transcribe(pretrained_trocr, tmp_path):
    model = _system(pretrained_trocr.dir).eval()
    model.set_decoder({"name": "beam", "beam_size": 3})
    assert model.hparams.num_beams == 3 and model.model.generation_config.num_beams == 3
    batch = first_batch(pretrained_trocr.root)
    rows = model.predict_step(batch, 0)
    assert [r["text"] for r in rows] == batch["texts"]
    assert all(0.5 < r["confidence"] <= 1.0 for r in rows)
    model.set_decoder("greedy")
    files = sorted((pretrained_trocr.root / "lines").glob("*.png"))
    assert [t.text for t in model.transcribe(files, segment="none")] == pretrained_trocr.texts
    assert model.transcribe(files[0], segment="none").text == pretrained_trocr.texts[0]
    with pytest.raises(ValueError, match="greedy/beam"):
        model.set_decoder({"name": "beam", "lm_path": "lm.arpa"})


def test_a_line_reads_the_same_alone_or_padded_in_a_batch(pretrained_trocr):
    model = _system(pretrained_trocr.dir).eval()
    batch = first_batch(pretrained_trocr.root)
    together = model.pixel_values(batch["images"], batch["widths"])
    hyps = model.generate(together)
    for i, width in enumerate(batch["widths"].tolist()):
        alone = model.pixel_values(batch["images"][i : i + 1, :, :, :width], batch["widths"][i : i + 1])
        assert torch.equal(alone[0], together[i])  # padding is cut off before the resize
        single = model.generate(alone)[0]
        assert single.text == hyps[i].text
        assert single.confidence == pytest.approx(hyps[i].confidence, abs=1e-5)


def test_low_data_height_and_unencodable_symbols_are_reported(tiny_trocr_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="htr_lightning.models"):
        TrOCRSystem(str(tiny_trocr_dir), charset=SYNTHETIC_CHARSET + "éß", height=16, max_new_tokens=48)
    messages = " ".join(r.message for r in caplog.records)
    assert "data.height=16 is below the 32 px" in messages
    assert "cannot encode 2 symbol(s)" in messages and "éß" in messages
