"""Writes a tiny, randomly initialised TrOCR-architecture checkpoint for CPU runs and tests.

``python examples/make_tiny_trocr.py checkpoints/tiny_trocr`` creates the directory that
``configs/experiment/trocr_tiny_synthetic.yaml`` fine-tunes: a ``VisionEncoderDecoderModel``
(ViT encoder, TrOCR decoder, hidden size 32, 2 + 2 layers, 32×128 input, 8 px patches), a
character-level tokenizer over the synthetic charset built with the ``tokenizers`` library
(``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 and a ``<s> … </s>`` template, laid out like
TrOCR's RoBERTa tokenizer) and a ViT image processor, saved with ``save_pretrained`` the way the
released checkpoints are, so :class:`~htr_lightning.models.trocr.TrOCRSystem` loads it through
the same ``from_pretrained`` path as ``microsoft/trocr-base-handwritten``. Nothing is
downloaded. The tests build their models with these functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import (
    PreTrainedTokenizerFast,
    TrOCRConfig,
    TrOCRProcessor,
    ViTConfig,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

try:  # transformers 5: the PIL backend (its default one needs torchvision, not installed here)
    from transformers import ViTImageProcessorPil as ViTImageProcessor
except ImportError:  # transformers 4: ViTImageProcessor is the PIL one
    from transformers import ViTImageProcessor

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")


def char_tokenizer(charset: str) -> PreTrainedTokenizerFast:
    """One token per character of ``charset`` after TrOCR's four special tokens.

    A BPE model without merges splits text into characters; the template adds ``<s>`` and
    ``</s>`` like RoBERTa's; the ``Fuse`` decoder joins tokens without spaces.

    >>> tok = char_tokenizer("ab ")
    >>> tok("ab a").input_ids
    [0, 4, 5, 6, 4, 2]
    >>> tok.decode([0, 4, 5, 6, 4, 2, 1], skip_special_tokens=True)
    'ab a'
    """
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *dict.fromkeys(charset)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


def tiny_trocr(vocab_size: int, image_size: tuple[int, int] = (32, 128), patch_size: int = 8,
               hidden: int = 32, layers: int = 2, heads: int = 2, max_positions: int = 64,
               seed: int = 0) -> VisionEncoderDecoderModel:
    """A randomly initialised ViT + TrOCR decoder with TrOCR's token ids (start = ``</s>``).

    Args:
        vocab_size: Tokens of the tokenizer.
        image_size: Input (height, width).
        patch_size: ViT patch side.
        hidden: Width of encoder and decoder.
        layers: Layers of each.
        heads: Attention heads of each.
        max_positions: Decoder positions (longest label + 1).
        seed: Initialisation seed.
    """
    torch.manual_seed(seed)
    encoder = ViTConfig(image_size=list(image_size), patch_size=patch_size, hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden)
    decoder = TrOCRConfig(vocab_size=vocab_size, d_model=hidden, decoder_layers=layers,
                          decoder_attention_heads=heads, decoder_ffn_dim=2 * hidden,
                          max_position_embeddings=max_positions, dropout=0.0,
                          decoder_start_token_id=2, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    return VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))


def tiny_processor(charset: str, image_size: tuple[int, int] = (32, 128)) -> TrOCRProcessor:
    """ViT image processor (resize to ``image_size``, mean/std 0.5, RGB) + :func:`char_tokenizer`."""
    images = ViTImageProcessor(size={"height": image_size[0], "width": image_size[1]},
                               image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    return TrOCRProcessor(image_processor=images, tokenizer=char_tokenizer(charset))


def save_tiny_trocr(directory: str | Path, charset: str, image_size: tuple[int, int] = (32, 128),
                    **sizes) -> Path:
    """Writes model, tokenizer and image processor to ``directory`` with ``save_pretrained``.

    Args:
        directory: Output folder.
        charset: Characters of the tokenizer.
        image_size: Input (height, width).
        sizes: Other :func:`tiny_trocr` arguments.

    Returns:
        The folder.
    """
    processor = tiny_processor(charset, image_size)
    tiny_trocr(len(processor.tokenizer), image_size, **sizes).save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``make_tiny_trocr.py DIRECTORY``."""
    from htr_lightning.data.synthetic import SYNTHETIC_CHARSET

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="output folder, e.g. checkpoints/tiny_trocr")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    path = save_tiny_trocr(args.directory, SYNTHETIC_CHARSET, hidden=args.hidden, layers=args.layers)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
