import json
import logging
import shutil

import pytest
import torch
from PIL import Image
from trocr_helpers import BOS, EOS, PAD, START, datamodule, trainer
from transformers import AutoTokenizer, TrOCRProcessor, VisionEncoderDecoderModel

from htr_lightning.data.synthetic import SYNTHETIC_CHARSET
from htr_lightning.metrics import ErrorRate
from htr_lightning.models import TrOCRSystem

pytestmark = pytest.mark.usefixtures("one_thread")

FIT = dict(max_new_tokens=48, lr=1e-3, scheduler="constant")


def _system(path, **kw) -> TrOCRSystem:
    return TrOCRSystem(str(path), charset=SYNTHETIC_CHARSET, height=32, **{**FIT, **kw})


def _cer(preds, refs) -> float:
    metric = ErrorRate("char")
    metric.update(preds, refs)
    return float(metric.compute())


def _copy(src, dst, **config_edits):
    """A copy of a checkpoint directory with ``{"config.json": {...}}``-style edits."""
    shutil.copytree(src, dst)
    for name, edits in config_edits.items():
        path = dst / f"{name}.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, **edits}))
    return dst


def _seed_003_recipe(directory, root, texts, steps):
    """The recipe of seed 003 in plain transformers: start token <s>, labels from the tokenizer's
    template (<s> text </s>) padded with <pad> instead of -100, then generate() with the
    checkpoint's defaults (max_length 20). Returns the CER after ``steps`` steps."""
    model = VisionEncoderDecoderModel.from_pretrained(directory)
    processor = TrOCRProcessor.from_pretrained(directory)
    tok = processor.tokenizer
    model.config.decoder_start_token_id = tok.bos_token_id
    model.config.pad_token_id = tok.pad_token_id
    files = sorted((root / "lines").glob("*.png"))
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt").pixel_values
    labels = tok(texts, padding=True, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(model.parameters(), lr=FIT["lr"])
    model.train()
    for _ in range(steps):
        loss = model(pixel_values=pixels, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="default `max_length`"):
        return _cer(tok.batch_decode(model.generate(pixels), skip_special_tokens=True), texts)


def test_finetuning_a_good_checkpoint_does_not_raise_its_cer(pretrained_trocr, tmp_path):
    ref = pretrained_trocr
    dm = datamodule(ref.root)
    model = _system(ref.dir)
    before = trainer(tmp_path).validate(model, dm, verbose=False)[0]["val_cer"]
    assert before <= 0.01, "the pretrained stand-in should read its lines"
    trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(model, dm)
    after = trainer(tmp_path).validate(model, dm, verbose=False)[0]["val_cer"]
    # The same checkpoint, lines and steps with seed 003's settings: the check below has teeth.
    seed_003 = _seed_003_recipe(ref.dir, ref.root, ref.texts, steps=30)
    print(f"\nCER of the pretrained model: {before:.4f}; after 30 fine-tuning steps through "
          f"TrOCRSystem: {after:.4f}; with seed 003's settings: {seed_003:.4f}")
    assert after <= before
    assert seed_003 > before + 0.05


@pytest.mark.parametrize("mistake", ["wrong_start_token", "prepended_bos", "pad_not_masked",
                                     "generation_cut_at_20"])
def test_each_known_misconfiguration_is_refused_or_corrected(mistake, pretrained_trocr, tmp_path, caplog):
    ref = pretrained_trocr
    if mistake == "wrong_start_token":
        # refused: asked for <s> (the tutorials' cls_token_id) where the checkpoint says </s>
        with pytest.raises(ValueError, match=r"decoder_start_token_id=0 differs .*generation config"):
            _system(ref.dir, decoder_start_token_id=BOS)
        # refused: a checkpoint whose config.json and generation_config.json disagree ...
        bad = _copy(ref.dir, tmp_path / "two_starts", config={"decoder_start_token_id": BOS},
                    generation_config={"decoder_start_token_id": START})
        with pytest.raises(ValueError, match="two decoder start tokens"):
            _system(bad)
        # ... until the user says which one it was trained with
        assert _system(bad, decoder_start_token_id=START).tokens.decoder_start_token_id == START
        # corrected: left unset, the checkpoint's own start token is used for training and generation
        model = _system(ref.dir)
        assert model.model.config.decoder_start_token_id == START
        assert model.model.generation_config.decoder_start_token_id == START
    elif mistake == "prepended_bos":
        model = _system(ref.dir)
        text = ref.texts[0]
        assert model.tokenizer(text).input_ids[0] == BOS  # the template would prepend <s>
        labels = model.encode_labels([text])
        chars = model.tokenizer(text, add_special_tokens=False).input_ids
        assert labels[0].tolist() == chars + [EOS]  # corrected: no <s>, </s> at the end
        decoder_inputs = model.model.prepare_decoder_input_ids_from_labels(labels)
        assert decoder_inputs[0].tolist() == [START] + chars  # </s> is the only context before
    elif mistake == "pad_not_masked":
        model = _system(ref.dir).eval()
        labels = model.encode_labels(["ab", "abcdef"])
        assert labels[0].tolist()[2:] == [EOS, -100, -100, -100, -100]  # corrected: -100, never <pad>
        assert PAD not in labels.tolist()[0]
        pixels = torch.randn(2, 3, 32, 128)
        batch = model(pixels, labels).loss
        alone = [model(pixels[i : i + 1], model.encode_labels([t])).loss for i, t in enumerate(["ab", "abcdef"])]
        assert batch.item() == pytest.approx((3 * alone[0] + 7 * alone[1]).item() / 10, rel=1e-5)
        # refused: a checkpoint whose pad id is not the tokenizer's
        bad = _copy(ref.dir, tmp_path / "bad_pad", generation_config={"pad_token_id": BOS})
        with pytest.raises(ValueError, match=r"pad_token_id=0 \(generation config\) differs"):
            _system(bad)
    else:  # generation_cut_at_20
        long = [t for t in ref.texts if len(t) > 20]
        assert long, "the fixture has lines longer than 20 tokens"
        plain = VisionEncoderDecoderModel.from_pretrained(ref.dir)  # as a user's script loads it
        model = _system(ref.dir)
        dm = datamodule(ref.root)
        dm.setup("validate")
        batch = next(iter(dm.val_dataloader()))
        pixels = model.pixel_values(batch["images"], batch["widths"])
        with torch.no_grad(), pytest.warns(UserWarning, match="default `max_length`"):
            cut = model.tokenizer.batch_decode(plain.generate(pixels), skip_special_tokens=True)
        # transformers' default length cuts the long lines at 20 tokens (characters here)
        assert max(map(len, cut)) == 20 and _cer(cut, batch["texts"]) > 0.05
        # corrected: an explicit max_new_tokens, whatever the checkpoint says
        assert [h.text for h in model.eval().generate(pixels)] == batch["texts"]
        # and a max_new_tokens below a reference's length is reported
        short = _system(ref.dir, max_new_tokens=20)
        with caplog.at_level(logging.WARNING, logger="htr_lightning.models"):
            trainer(tmp_path).validate(short, dm, verbose=False)
        assert any("need more than max_new_tokens=20" in r.message for r in caplog.records)


def test_inconsistent_vocabulary_or_eos_is_refused(pretrained_trocr, tmp_path):
    ref = pretrained_trocr
    bad = _copy(ref.dir, tmp_path / "eos", generation_config={"eos_token_id": PAD})
    with pytest.raises(ValueError, match=r"eos_token_id=1 \(generation config\) differs .*'</s>'"):
        _system(bad)
    more = tmp_path / "more_tokens"
    shutil.copytree(ref.dir, more)
    tok = AutoTokenizer.from_pretrained(more)
    tok.add_tokens(["ä", "ö", "ü"])
    tok.save_pretrained(more)
    with pytest.raises(ValueError, match="tokenizer has 83 tokens but the decoder predicts only 80"):
        _system(more)
    with pytest.raises(ValueError, match="max_new_tokens=64 must be in 1..63"):
        _system(ref.dir, max_new_tokens=64)
