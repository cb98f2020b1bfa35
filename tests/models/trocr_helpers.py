"""Tiny TrOCR builders for the tests: a handful of line files, a model pretrained on them the way
the released checkpoints were trained, and the datamodule / trainer that fine-tune it.

The model, tokenizer and image processor come from ``examples/make_tiny_trocr.py`` (loaded by
path, so the example the README documents is the code the tests run). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import torch
from transformers import TrOCRProcessor, VisionEncoderDecoderModel

from htr_lightning.data import HTRDataModule
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET, SyntheticLines
from htr_lightning.models.trocr import TrOCRSystem

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_tiny_trocr", ROOT / "examples" / "make_tiny_trocr.py")
make_tiny_trocr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tiny_trocr)

IMAGE_SIZE = (32, 128)
START, PAD, EOS, BOS = 2, 1, 2, 0


def write_lines(root: Path, n: int = 6, seed: int = 0) -> list[str]:
    """Writes ``n`` synthetic lines of 1-4 words as ``root/lines/NAME.png + NAME.txt``; two of
    the default six are longer than 20 characters (tokens).

    Returns:
        Their texts in file order.
    """
    folder = root / "lines"
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for i, sample in enumerate(SyntheticLines(n, split="train", seed=seed, min_words=1, max_words=4)):
        sample.load().save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(sample.text, encoding="utf-8")
        texts.append(sample.text)
    return texts


def fairseq_labels(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and decoder inputs as TrOCR was trained (fairseq): target = tokens + ``</s>``,
    input = ``</s>`` + tokens; label padding -100, input padding ``<pad>``."""
    rows = [t + [EOS] for t in tokenizer(texts, add_special_tokens=False).input_ids]
    width = max(map(len, rows))
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row)
    inputs = torch.cat([torch.full((len(rows), 1), START), labels[:, :-1]], dim=1)
    return labels, inputs.masked_fill(inputs == -100, PAD)


def pretrain(directory: Path, root: Path, steps: int = 400, lr: float = 3e-3) -> int:
    """Trains the tiny model in ``directory`` on ``root/lines`` with plain transformers code,
    on the processor's pixels and on the pixels our batches give (:meth:`TrOCRSystem.pixel_values`,
    within 0.05 of the processor's), until greedy and beam-3 generation read every line of both
    exactly, and saves it back: a stand-in for a released checkpoint that is already good on
    these lines. (Trained on the processor's pixels alone, it could stop while a beam over our
    pixels still cut a line short: seen on this project's second CPU model, where float rounding
    gave other weights.)

    The saved ``config.json`` declares no top-level start/pad token and
    ``generation_config.json`` has transformers' defaults (``max_length`` 20), like the released
    TrOCR checkpoints.

    Returns:
        The number of steps it took.
    """
    from PIL import Image

    model = VisionEncoderDecoderModel.from_pretrained(directory)
    processor = TrOCRProcessor.from_pretrained(directory)
    files = sorted((root / "lines").glob("*.png"))
    texts = [f.with_suffix(".txt").read_text(encoding="utf-8") for f in files]
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt").pixel_values
    batch = first_batch(root)
    system = TrOCRSystem(str(directory), charset=SYNTHETIC_CHARSET, height=IMAGE_SIZE[0],
                         max_new_tokens=48)
    ours = system.pixel_values(batch["images"], batch["widths"])
    pixels, texts = torch.cat([pixels, ours]), texts + list(batch["texts"])
    labels, inputs = fairseq_labels(processor.tokenizer, texts)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for step in range(1, steps + 1):
        model.train()
        loss = model(pixel_values=pixels, decoder_input_ids=inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            model.eval()
            reads = []
            with torch.no_grad():
                for beams in (1, 3):
                    out = model.generate(pixels, decoder_start_token_id=START, eos_token_id=EOS,
                                         pad_token_id=PAD, max_new_tokens=40, num_beams=beams)
                    reads.append(processor.tokenizer.batch_decode(out, skip_special_tokens=True))
            if all(read == texts for read in reads):
                break
    model.save_pretrained(directory)
    return step


def first_batch(root: Path) -> dict:
    """The first val batch of :func:`datamodule` (all six lines)."""
    dm = datamodule(root)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def datamodule(root: Path, **kw) -> HTRDataModule:
    """The standard datamodule over ``root/lines`` for train, val and test (the same lines)."""
    defaults = dict(dataset="folder", root=str(root),
                    splits={"train": "lines", "val": "lines", "test": "lines"},
                    charset=SYNTHETIC_CHARSET, height=IMAGE_SIZE[0], batch_size=6,
                    augment=False, bucket_by_width=False)
    return HTRDataModule(**{**defaults, **kw})


def trainer(tmp_path: Path, **kw) -> pl.Trainer:
    """A quiet CPU trainer."""
    defaults = dict(max_steps=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, accelerator="cpu", devices=1,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kw})
