"""TrOCR fine-tuning (SPEC section 4, seed 003) that cannot quietly make a good checkpoint worse.

Seed 003 fine-tuned a 4.33 % CER TrOCR into a 30.85 % one. The causes, and what this module does
about each:

* **decoder start token**: read from the checkpoint's own configuration
  (``generation_config.json``, ``config.json``), checked against the tokenizer, and an explicit
  ``decoder_start_token_id`` that differs from the checkpoint's is refused
  (:func:`resolve_token_settings`);
* **an extra ``<s>`` in the labels**: labels are the tokens of the text plus ``</s>``, encoded
  without the tokenizer's template, so the start token is the only context before the first
  character, as when the checkpoint was trained (:meth:`TrOCRSystem.encode_labels`);
* **padding not masked**: label padding is -100, never the pad id;
* **generation cut at 20 tokens**: generation always uses an explicit ``max_new_tokens`` (the
  checkpoint's ``max_length``, 20 by default, is never used) and a configurable beam size;
  references longer than ``max_new_tokens`` are reported;
* **evaluation**: ``val_cer`` / ``test_cer`` are computed on ``generate`` output decoded with the
  special tokens removed, with the same settings as any baseline run through ``validate``;
* **preprocessing**: the checkpoint's image processor settings (384×384, mean/std 0.5, RGB for
  the released models) are applied to the standard batch (:meth:`TrOCRSystem.pixel_values`).

The pretrained model is referenced by its ``pretrained`` name or path, not stored: a checkpoint
of :class:`TrOCRSystem` holds the parameters that train (all of them for full fine-tuning; only
the adapters for LoRA; the unfrozen layers otherwise) and rebuilds the rest from ``pretrained``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    GenerationConfig,
    VisionEncoderDecoderModel,
    get_scheduler,
)

from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.decoding import Hypothesis
from htr_lightning.inference.pages import Transcription, prediction_records, transcribe_sources
from htr_lightning.metrics import line_errors, split_metrics, update_split_metrics
from htr_lightning.models.base import HTRSystem
from htr_lightning.text.normalize import normalize_text

log = logging.getLogger("htr_lightning.models")

LORA_DEFAULTS: dict = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"]}
"""LoRA settings used where ``lora`` does not give them: the attention projections of every
decoder layer (self- and cross-attention), rank 8."""

# name -> (role, why the tokenizer must have it, what a different declared id would do)
_SPECIAL_ROLES = {
    "pad_token_id": ("pad", "generate could not fill the lines that finish first",
                     "generate would fill finished lines with a real token"),
    "eos_token_id": ("end-of-sequence", "labels need one to teach where a line ends",
                     "generate would not stop where the labels end"),
}

# PIL resampling codes (what image processors store) -> torch.nn.functional.interpolate modes.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class TokenSettings:
    """The special token ids a fine-tuning run uses, validated against each other.

    Attributes:
        decoder_start_token_id: The decoder's first input (``</s>``, 2, for the released TrOCR).
        pad_token_id: Fills finished sequences in ``generate`` (labels are padded with -100).
        eos_token_id: Ends every label and every generated line.
        bos_token_id: The tokenizer's ``<s>`` (never put into labels), or None.
        vocab_size: Ids the decoder can predict (rows of its output layer).
    """

    decoder_start_token_id: int
    pad_token_id: int
    eos_token_id: int
    bos_token_id: int | None
    vocab_size: int


def _declared(model: VisionEncoderDecoderModel, name: str) -> dict[str, int | list[int]]:
    """Where a checkpoint sets a token id: source -> value, for the sources that set it."""
    sources = {
        # generation_config.json, or what transformers derives from config.json without one
        "generation config": getattr(model.generation_config, name, None),
        "config.json": getattr(model.config, name, None),
        "config.json decoder": getattr(model.config.decoder, name, None),
    }
    return {k: v for k, v in sources.items() if v is not None}


def resolve_token_settings(model: VisionEncoderDecoderModel, tokenizer,
                           decoder_start_token_id: int | None = None) -> TokenSettings:
    """Derives the special token ids from the checkpoint and its tokenizer, and checks them.

    Rules (each violation raises with the value, where it comes from and why it is wrong):

    * the decoder's output layer, its ``vocab_size`` and any other declared vocabulary size
      agree, and the tokenizer has no more tokens than the decoder predicts;
    * the tokenizer has a pad and an eos token, and every pad / eos id the checkpoint declares
      is the tokenizer's;
    * the decoder start token is the one the checkpoint declares: its generation config
      (what it generates with) and ``config.json`` (what ``forward`` shifts labels with) must
      not disagree unless ``decoder_start_token_id`` picks one of them; a
      ``decoder_start_token_id`` that differs from the checkpoint's is refused; one is
      required when the checkpoint declares none;
    * every id is below the vocabulary size.

    Args:
        model: The loaded checkpoint.
        tokenizer: Its tokenizer.
        decoder_start_token_id: Explicit start token, or None to take the checkpoint's.

    Returns:
        The settings to train and generate with.

    Raises:
        ValueError: on any inconsistency.
    """
    vocab = model.decoder.get_output_embeddings().out_features
    declared_vocab = {"config.json decoder": model.config.decoder.vocab_size,
                      "config.json": getattr(model.config, "vocab_size", None)}
    for source, size in declared_vocab.items():
        if size is not None and size != vocab:
            raise ValueError(f"vocab_size={size} ({source}) but the decoder's output layer predicts "
                             f"{vocab} ids: the checkpoint is inconsistent")
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the decoder predicts only "
                         f"{vocab} ids: tokens above {vocab - 1} could never be predicted and would "
                         "break the loss; use the tokenizer saved with this checkpoint")

    resolved: dict[str, int] = {}
    for name, (role, if_missing, if_different) in _SPECIAL_ROLES.items():
        own = getattr(tokenizer, name)
        if own is None:
            raise ValueError(f"the tokenizer has no {role} token ({name} is None): {if_missing}")
        for source, value in _declared(model, name).items():
            if not (own in value if isinstance(value, (list, tuple)) else value == own):
                raise ValueError(f"{name}={value} ({source}) differs from the tokenizer's {name}={own} "
                                 f"({tokenizer.convert_ids_to_tokens(own)!r}): {if_different}")
        resolved[name] = own

    start = _declared(model, "decoder_start_token_id")
    # The generation config is what the checkpoint generates with and config.json what its
    # forward() shifted the labels with; the decoder's own config only fills in when both are
    # unset (TrOCRConfig sets 2 by default, whatever the model was trained with).
    primary = {k: v for k, v in start.items() if k != "config.json decoder"}
    checkpoint_start = next(iter(primary.values()), start.get("config.json decoder"))
    where = ", ".join(f"{k}: {v}" for k, v in start.items()) or "nowhere"
    if decoder_start_token_id is not None:
        if primary and decoder_start_token_id not in primary.values():
            raise ValueError(
                f"decoder_start_token_id={decoder_start_token_id} differs from the start token this "
                f"checkpoint was trained and generates with ({where}): every line would start from "
                "a context the decoder never saw (seed 003: 4.33 % -> 30.85 % CER). Leave "
                "decoder_start_token_id unset to use the checkpoint's")
        if not primary and checkpoint_start is not None and decoder_start_token_id != checkpoint_start:
            raise ValueError(
                f"decoder_start_token_id={decoder_start_token_id} differs from the checkpoint's "
                f"{checkpoint_start} ({where}); leave it unset to use the checkpoint's")
        start_id = decoder_start_token_id
    else:
        if len(set(primary.values())) > 1:
            raise ValueError(
                f"the checkpoint declares two decoder start tokens ({where}): it was trained with "
                "one and generates with the other. Set decoder_start_token_id to the one it was "
                "trained with (2, '</s>', for the released TrOCR checkpoints)")
        if checkpoint_start is None:
            raise ValueError("the checkpoint declares no decoder_start_token_id (config.json, "
                             "generation_config.json): set decoder_start_token_id to the id it was "
                             "trained with (2, '</s>', for the released TrOCR checkpoints)")
        start_id = checkpoint_start
    settings = TokenSettings(decoder_start_token_id=int(start_id),
                             pad_token_id=int(resolved["pad_token_id"]),
                             eos_token_id=int(resolved["eos_token_id"]),
                             bos_token_id=tokenizer.bos_token_id, vocab_size=vocab)
    for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        if not 0 <= getattr(settings, name) < vocab:
            raise ValueError(f"{name}={getattr(settings, name)} is outside the vocabulary "
                             f"(0..{vocab - 1})")
    return settings


def _block_stack(module: nn.Module) -> tuple[str, int]:
    """Name and length of a network's stack of layers: its ``nn.ModuleList`` holding the most
    parameters (``encoder.layer`` of ViT/DeiT/BEiT, ``model.decoder.layers`` of TrOCR)."""
    stacks = [(sum(p.numel() for p in m.parameters()), name, len(m))
              for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise ValueError(f"{type(module).__name__} has no stack of layers to train the last of")
    _, name, length = max(stacks)
    return name, length


def _last_layers(module: nn.Module, n: int, what: str) -> set[str]:
    """Parameter names (relative to ``module``) of its last ``n`` layers and of the layer norms
    that follow the stack (ViT's final ``layernorm``)."""
    stack, length = _block_stack(module)
    if not 0 < n <= length:
        raise ValueError(f"{what}={n}: the {type(module).__name__} has {length} layers (1..{length})")
    names = {f"{stack}.{i}.{p}" for i in range(length - n, length)
             for p, _ in module.get_submodule(stack)[i].named_parameters()}
    after = False
    for name, m in module.named_modules():
        if name == stack:
            after = True
        elif after and not name.startswith(stack + ".") and isinstance(m, nn.LayerNorm):
            names |= {f"{name}.{p}" for p, _ in m.named_parameters()}
    return names


class TrOCRSystem(HTRSystem):
    """Fine-tunes a ``VisionEncoderDecoderModel`` (TrOCR) on the standard HTR batches.

    The model, its tokenizer and its image processor come from ``pretrained`` (a hub name such
    as ``microsoft/trocr-base-handwritten`` when present in the local cache, or a directory
    written by ``save_pretrained``). Token settings are derived from that checkpoint and
    validated (:func:`resolve_token_settings`); the batch of :mod:`htr_lightning.data.batching`
    is turned into the processor's input on the fly (:meth:`pixel_values`), so
    :class:`~htr_lightning.data.HTRDataModule` feeds it with the same data section as the CTC
    models. What trains is decided once in ``__init__`` (full fine-tuning by default; a frozen
    encoder; the last N encoder / decoder layers; LoRA adapters on the decoder), and the
    checkpoint keeps exactly the parameters that train.

    Args:
        pretrained: Hub name or directory of the model, tokenizer and image processor.
        charset: The data's symbols (linked from ``data.charset`` in the CLI); only used to warn
            about symbols the tokenizer cannot encode.
        height: Line height the data delivers (linked from ``data.height``); the same
            preprocessing is used by :meth:`transcribe`.
        decoder_start_token_id: Explicit decoder start token; None takes the checkpoint's. A
            value that differs from the checkpoint's is refused.
        max_new_tokens: Most tokens generated per line (the checkpoint's ``max_length`` is not
            used).
        num_beams: Beam size of generation (1: greedy).
        freeze_encoder: Train the decoder only.
        train_last_encoder_layers: Train only the last N encoder layers (and the layer norm
            after them); None trains all of them (unless ``freeze_encoder``).
        train_last_decoder_layers: Train only the last N decoder layers; None trains the whole
            decoder (unless ``lora``).
        lora: LoRA on the decoder: ``peft.LoraConfig`` arguments over :data:`LORA_DEFAULTS`
            (``{}`` takes the defaults); the decoder's own weights are then frozen.
        gradient_checkpointing: Recompute activations in the backward pass (less memory).
        optimizer: "adamw" or "adamw8bit" (bitsandbytes, CUDA only; AdamW elsewhere, with a
            message).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        scheduler: A ``transformers.get_scheduler`` name: "linear", "cosine", "constant",
            "constant_with_warmup", ...
        warmup: Fraction of the planned steps spent warming up.
    """

    def __init__(
        self,
        pretrained: str,
        charset: str | None = None,
        height: int = 384,
        decoder_start_token_id: int | None = None,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        freeze_encoder: bool = False,
        train_last_encoder_layers: int | None = None,
        train_last_decoder_layers: int | None = None,
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        scheduler: str = "linear",
        warmup: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be adamw or adamw8bit, not {optimizer!r}")
        if freeze_encoder and train_last_encoder_layers is not None:
            raise ValueError("freeze_encoder and train_last_encoder_layers contradict each other; "
                             "set one of them")
        if lora is not None and train_last_decoder_layers is not None:
            raise ValueError("with lora the decoder's own weights are frozen and only the adapters "
                             "train; train_last_decoder_layers must be unset")
        # .float(): some checkpoints are stored in half precision; Lightning's precision setting,
        # not the file, decides the training precision.
        self.model = VisionEncoderDecoderModel.from_pretrained(pretrained).float()
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.image_processor = AutoImageProcessor.from_pretrained(pretrained)
        self.tokens = resolve_token_settings(self.model, self.tokenizer, decoder_start_token_id)
        # forward() shifts the labels right with these two; generate() reads generation_config.
        self.model.config.decoder_start_token_id = self.tokens.decoder_start_token_id
        self.model.config.pad_token_id = self.tokens.pad_token_id
        self.max_positions = getattr(self.model.config.decoder, "max_position_embeddings", None)
        self._set_generation(max_new_tokens, num_beams)
        self._init_image_transform(height)
        self._check_charset(charset)

        if lora is not None:
            from peft import LoraConfig, get_peft_model  # only when used: its import takes seconds

            config = LoraConfig(**{**LORA_DEFAULTS, **lora})
            self.model.decoder = get_peft_model(self.model.decoder, config)
        self._select_trainable()
        if gradient_checkpointing:
            # Non-reentrant checkpointing also gives gradients when the layers' inputs need none
            # (frozen embeddings, LoRA); the reentrant kind would silently train nothing there.
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            kwargs = {"use_reentrant": False}
            if enable is not None:  # transformers >= 5; gradient_checkpointing_enable before
                enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

        self.metrics = split_metrics()
        self._reported: set[str] = set()
        self.model.train()  # from_pretrained returns it in eval mode (dropout off)

    # --------------------------------------------------------------------------- set-up
    def _set_generation(self, max_new_tokens: int, num_beams: int) -> None:
        """Builds the one ``GenerationConfig`` used for validation, test, predict and export."""
        limit = None if self.max_positions is None else self.max_positions - 1
        if max_new_tokens < 1 or (limit is not None and max_new_tokens > limit):
            raise ValueError(f"max_new_tokens={max_new_tokens} must be in 1..{limit} (the decoder "
                             f"has {self.max_positions} positions, one goes to the start token)")
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, not {num_beams}")
        t = self.tokens
        # A fresh config, not the checkpoint's: its max_length (20 unless set) would cut lines.
        self.model.generation_config = GenerationConfig(
            decoder_start_token_id=t.decoder_start_token_id, bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id,
            max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
            early_stopping=num_beams > 1, return_dict_in_generate=True, output_scores=True)

    def _init_image_transform(self, height: int) -> None:
        """Reads the image processor's size, resampling and normalisation.

        Resolution: TrOCR squeezes a whole line into the processor's fixed size (384×384 for
        the released checkpoints, so a line 1,700 px wide loses detail horizontally, and a line
        about 120 px high is stretched vertically). The CTC data path first resizes lines to
        ``data.height``; for TrOCR that height should not be below the processor's height, or
        the image loses vertical detail the model was trained to see before the processor's
        resize even starts (at 64 px, a third of what a 384 px input can carry). With
        ``data.height`` equal to the processor's height the only change left is the final
        resize of :meth:`pixel_values`, as with the processor itself; ``data.max_width`` may
        squeeze wide lines to a few times the processor's width to save memory, since they are
        squeezed to it anyway.
        """
        ip = self.image_processor
        size = dict(ip.size) if getattr(ip, "size", None) is not None else {}
        if not (size.get("height") and size.get("width")) or not getattr(ip, "do_resize", True):
            raise ValueError(f"{type(ip).__name__} does not resize to a fixed height × width "
                             f"(size={size}); TrOCRSystem needs one (ViT/DeiT/BEiT processors do)")
        self.image_size = (int(size["height"]), int(size["width"]))
        resample = getattr(ip, "resample", None)
        resample = 2 if resample is None else int(resample)  # PIL code; 2 = bilinear
        if resample not in _RESAMPLE:
            log.warning("image processor resampling %d has no torch equivalent; using bilinear",
                        resample)
        self.resample = _RESAMPLE.get(resample, "bilinear")
        # pixel = value in 0..255 * rescale_factor, then (pixel - mean) / std per channel.
        scale = 255.0 * float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 255.0
        normalize = getattr(ip, "do_normalize", True)
        channels = int(getattr(self.model.config.encoder, "num_channels", 3))
        mean = torch.tensor(ip.image_mean if normalize else 0.0).float().flatten().expand(channels)
        std = torch.tensor(ip.image_std if normalize else 1.0).float().flatten().expand(channels)
        self.register_buffer("pixel_mean", mean.float().view(1, -1, 1, 1) / scale, persistent=False)
        self.register_buffer("pixel_std", std.float().view(1, -1, 1, 1) / scale, persistent=False)
        self.preprocess = LinePreprocessor(height=height)
        if height < self.image_size[0]:
            log.warning("data.height=%d is below the %d px the image processor resizes lines to: "
                        "vertical detail the model was trained to see is lost before it reads the "
                        "line; set data.height to %d", height, self.image_size[0], self.image_size[0])

    def _check_charset(self, charset: str | None) -> None:
        """Warns about symbols of the data that the tokenizer turns into its unknown token."""
        unk = self.tokenizer.unk_token_id
        if not charset or unk is None:
            return
        lost = [c for c in charset if unk in self.tokenizer(c, add_special_tokens=False).input_ids]
        if lost:
            log.warning("the tokenizer of %s cannot encode %d symbol(s) of the data (they become %r "
                        "and can never be predicted): %s", self.hparams.pretrained, len(lost),
                        self.tokenizer.unk_token, "".join(lost))

    def _select_trainable(self) -> None:
        """The one decision about what trains: sets ``requires_grad``, which
        :meth:`on_save_checkpoint` then reads to keep exactly the trained parameters."""
        hp = self.hparams
        encoder = self.model.encoder
        # VisionEncoderDecoderModel feeds the decoder the encoder's last hidden state; a pooler
        # (ViTModel has one) gets no gradient, and trainable parameters without gradients break
        # DDP. It is never trained.
        pooler = getattr(encoder, "pooler", None)
        unused = set() if pooler is None else {f"encoder.pooler.{n}" for n, _ in
                                               pooler.named_parameters()}
        enc_last = dec_last = adapters = None
        if hp.train_last_encoder_layers is not None:
            enc_last = {f"encoder.{n}" for n in _last_layers(
                encoder, hp.train_last_encoder_layers, "train_last_encoder_layers")}
        if hp.train_last_decoder_layers is not None:
            dec_last = {f"decoder.{n}" for n in _last_layers(
                self.model.decoder, hp.train_last_decoder_layers, "train_last_decoder_layers")}
        if hp.lora is not None:  # peft has frozen the wrapped decoder and left its adapters trainable
            adapters = {n for n, p in self.model.named_parameters()
                        if p.requires_grad and n.startswith("decoder.")}

        def trains(name: str) -> bool:
            if name.startswith("encoder."):
                if name in unused or hp.freeze_encoder:
                    return False
                return enc_last is None or name in enc_last
            if adapters is not None:
                return name in adapters
            # enc_to_dec_proj (encoder and decoder widths differ) feeds the first decoder layer.
            return dec_last is None or name in dec_last

        for name, p in self.model.named_parameters():
            p.requires_grad_(trains(name))
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("these options leave nothing to train")

    # -------------------------------------------------------------------------- inputs
    def pixel_values(self, images: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Turns a standard batch into the image processor's input.

        Each line is cut to its width, turned back to dark ink on white paper, resized to the
        processor's height × width with its resampling (antialiased, like PIL) and normalised
        with its mean and std, on the batch's device. Written with torch rather than by calling
        the processor on PIL images so that the data path stays the one every model shares (the
        DataLoader workers do the decoding and augmentation) and the resize runs on the GPU.

        Args:
            images: (B, 1, H, W) float, ink = 1, background = 0.
            widths: (B,) content widths.

        Returns:
            (B, C, h, w) float: C channels of the encoder (3 for TrOCR), h × w of the processor.
        """
        out = []
        for i in range(images.shape[0]):
            w = max(1, int(widths[i]))
            paper = 1.0 - images[i : i + 1, :1, :, :w].float()  # (1, 1, H, w), white = 1
            kwargs = {} if self.resample == "nearest" else {"antialias": True, "align_corners": False}
            out.append(F.interpolate(paper, size=self.image_size, mode=self.resample, **kwargs))
        paper = torch.cat(out).clamp(0.0, 1.0)  # PIL resizes 8-bit images, so it clamps
        return (paper - self.pixel_mean) / self.pixel_std

    def encode_labels(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> torch.Tensor:
        """Decoder targets: the text's tokens, then ``</s>``; padding is -100.

        The tokenizer's template (``<s> … </s>`` for TrOCR's RoBERTa tokenizer) is not applied:
        the model prepends the decoder start token itself when it shifts the labels right, so an
        extra ``<s>`` would teach it a first step it was never trained on. A line longer than
        the decoder's positions is left out (all -100) and reported once.

        Args:
            texts: B transcriptions.
            ids: Their line ids, for messages.

        Returns:
            (B, L) int64, L = longest label in the batch.

        Raises:
            ValueError: if a label still starts with ``<s>`` (a tokenizer that adds it even when
                told not to).
        """
        t = self.tokens
        rows = []
        for i, tokens in enumerate(self.tokenizer(list(texts), add_special_tokens=False).input_ids):
            if tokens[:1] == [t.bos_token_id] and t.bos_token_id != t.eos_token_id:
                raise ValueError(f"the tokenizer put {self.tokenizer.bos_token!r} before {texts[i]!r} "
                                 "with add_special_tokens=False; labels must not start with it")
            row = tokens + [t.eos_token_id]
            if self.max_positions is not None and len(row) > self.max_positions:
                name = ids[i] if ids is not None else repr(texts[i][:40])
                if name not in self._reported:
                    self._reported.add(name)
                    log.warning("line %s: %d tokens do not fit the decoder's %d positions; it is left "
                                "out of the loss", name, len(row), self.max_positions)
                row = []
            rows.append(row)
        labels = torch.full((len(rows), max([len(r) for r in rows] + [1])), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return labels

    # --------------------------------------------------------------------------- model
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        """Teacher-forced pass; returns the transformers output (``.loss``, ``.logits``)."""
        return self.model(pixel_values=pixel_values, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor) -> list[Hypothesis]:
        """Transcribes processor inputs with the run's generation settings.

        Args:
            pixel_values: (B, C, h, w) from :meth:`pixel_values`.

        Returns:
            B hypotheses: text decoded without special tokens and whitespace-normalised
            (BPE tokenizers often start a line with a space); confidence = exp(mean log
            probability of the generated tokens, ``</s>`` included).
        """
        out = self.model.generate(pixel_values=pixel_values,
                                  generation_config=self.model.generation_config)
        seqs = out.sequences
        texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
        if getattr(out, "sequences_scores", None) is not None:  # beam search: length-normalised
            conf = out.sequences_scores.float().exp()
        else:
            step = self.model.compute_transition_scores(seqs, out.scores, normalize_logits=True)
            eos = (seqs[:, -step.shape[1]:] == self.tokens.eos_token_id).long()
            keep = ((eos.cumsum(1) - eos) == 0).float()  # tokens up to and including the first </s>
            conf = ((step.float() * keep).sum(1) / keep.sum(1).clamp(min=1)).exp()
        return [Hypothesis(normalize_text(text), float(c)) for text, c in zip(texts, conf.tolist())]

    def set_decoder(self, decoder: str | dict) -> None:
        """Changes generation of a trained model (saved with the next checkpoint).

        Args:
            decoder: "greedy", or a dict with any of ``name`` ("greedy" or "beam"),
                ``beam_size`` and ``max_new_tokens`` (the CLI's ``--decoder``).
        """
        spec = {"name": decoder} if isinstance(decoder, str) else dict(decoder)
        name = spec.pop("name", "beam" if "beam_size" in spec else "greedy")
        beams = int(spec.pop("beam_size", 1 if name == "greedy" else self.hparams.num_beams))
        max_new = int(spec.pop("max_new_tokens", self.hparams.max_new_tokens))
        if name not in ("greedy", "beam") or spec:
            raise ValueError(f"TrOCR generation takes name greedy/beam, beam_size and max_new_tokens; "
                             f"got {decoder!r}")
        self._set_generation(max_new, beams)
        self.hparams["num_beams"], self.hparams["max_new_tokens"] = beams, max_new

    # --------------------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """Cross-entropy of the teacher-forced decoder over the label tokens (``train_loss``)."""
        labels = self.encode_labels(batch["texts"], batch["ids"])
        if not bool((labels != -100).any()):
            return None
        loss = self(self.pixel_values(batch["images"], batch["widths"]), labels.to(self.device)).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def _report_cut(self, labels: torch.Tensor, ids: Sequence[str]) -> None:
        limit = self.hparams.max_new_tokens
        lengths = (labels != -100).sum(1).tolist()
        long = [i for i, n in zip(ids, lengths) if n > limit and i not in self._reported]
        if long:
            self._reported.update(long)
            log.warning("%d reference line(s) need more than max_new_tokens=%d tokens, so their "
                        "transcriptions are cut (e.g. %s); raise model.max_new_tokens",
                        len(long), limit, long[0])

    def _eval_step(self, batch: dict, stage: str) -> list[dict]:
        if not batch["texts"]:
            return []
        pixels = self.pixel_values(batch["images"], batch["widths"])
        labels = self.encode_labels(batch["texts"], batch["ids"])
        self._report_cut(labels, batch["ids"])
        loss = self(pixels, labels.to(self.device)).loss if bool((labels != -100).any()) else None
        records = line_errors(batch["ids"], batch["texts"], self.generate(pixels))
        update_split_metrics(self, stage, loss, records)
        return records

    def validation_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Loss, generation and CER/WER accumulation (``val_cer``, ``val_wer``); returns each
        line's :func:`~htr_lightning.metrics.line_errors` record."""
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """As validation, logged as ``test_cer`` / ``test_wer``."""
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Transcriptions: one ``{"id", "text", "confidence"}`` dict per line, with each line's
        ``meta`` and the inputs without lines, as :meth:`CTCSystem.predict_step
        <htr_lightning.models.CTCSystem.predict_step>` returns them for the prediction writer."""
        hyps = self.generate(self.pixel_values(batch["images"], batch["widths"])) if batch["ids"] else []
        return prediction_records(batch, hyps)

    @torch.inference_mode()
    def transcribe(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
                   segment: str = "auto", batch_size: int = 16, rectify: bool | None = None
                   ) -> Transcription | list[Transcription]:
        """Transcribes line, paragraph or page images (or PAGE-XML files) with the training
        preprocessing, as :meth:`CTCSystem.transcribe
        <htr_lightning.models.CTCSystem.transcribe>` does.

        Args:
            images: A path or PIL image, or a list of them.
            segment: How images become lines (see
                :data:`~htr_lightning.inference.pages.SEGMENT_MODES`).
            batch_size: Lines per ``generate`` call.
            rectify: Straighten PAGE-XML lines along their baselines; None (the default) cuts
                them as the training lines were (:attr:`rectified_lines`).

        Returns:
            One :class:`~htr_lightning.inference.pages.Transcription` per input (a single one
            for a single input).
        """
        with self.evaluating():
            return transcribe_sources(
                images, lambda batch: self.generate(self.pixel_values(
                    batch["images"].to(self.device), batch["widths"])),
                self.preprocess, segment, batch_size,
                rectify=self.rectified_lines if rectify is None else rectify)

    # -------------------------------------------------------------------- checkpoints
    def is_trainable(self, key: str) -> bool:
        """Whether a ``state_dict`` key belongs to a trained parameter (kept in checkpoints)."""
        return key in self._trained_keys()

    def _trained_keys(self) -> set[str]:
        # remove_duplicate=False: a tied weight (TrOCR's output layer and token embeddings) has
        # two keys and both must be kept or both rebuilt.
        return {f"model.{n}" for n, p in self.model.named_parameters(remove_duplicate=False)
                if p.requires_grad}

    def _frozen_checksum(self) -> float:
        """Sum of the frozen weights: identifies the base the checkpoint's parameters belong to."""
        frozen = [p for p in self.model.parameters() if not p.requires_grad]
        return float(sum(p.detach().double().sum() for p in frozen))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keeps only the trained parameters; the frozen rest is rebuilt from ``pretrained``."""
        super().on_save_checkpoint(checkpoint)
        keep = self._trained_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["trocr_frozen_checksum"] = self._frozen_checksum()
        # load_system finds the class here also for checkpoints saved outside the CLI.
        checkpoint.setdefault("hyper_parameters", {}).setdefault(
            "_class_path", f"{type(self).__module__}.{type(self).__qualname__}")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Completes the checkpoint's trained parameters with the frozen ones of ``pretrained``.

        Raises:
            ValueError: if a trained parameter is missing, or the frozen weights found at
                ``pretrained`` are not those the checkpoint was trained on.
        """
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        missing = sorted(k for k in self._trained_keys() if k not in state)
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained parameter(s) (e.g. "
                             f"{missing[0]}); was it trained with other freezing/LoRA options?")
        expected = checkpoint.get("trocr_frozen_checksum")
        found = self._frozen_checksum()
        if expected is not None and not math.isclose(expected, found, rel_tol=1e-7, abs_tol=1e-6):
            raise ValueError(f"the frozen weights loaded from {self.hparams.pretrained!r} are not "
                             f"those this checkpoint was trained on (checksum {found} vs {expected}); "
                             "the checkpoint stores only the trained parameters and needs the same base")
        for key, value in self.state_dict().items():
            state.setdefault(key, value)

    def export_pretrained(self, directory: str | Path) -> Path:
        """Writes a standalone transformers model (LoRA merged), its tokenizer, image processor
        and generation settings, loadable with ``VisionEncoderDecoderModel.from_pretrained``.

        Args:
            directory: Output folder (created).

        Returns:
            The folder.
        """
        directory = Path(directory)
        # A copy, so that merging the adapters leaves this system trainable as it was.
        model = copy.deepcopy(self.model).cpu().float()
        if self.hparams.lora is not None:
            model.decoder = model.decoder.merge_and_unload()
        model.generation_config.return_dict_in_generate = False
        model.generation_config.output_scores = False
        for p in model.parameters():
            p.requires_grad_(True)
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        return directory

    # ---------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        """AdamW (or bitsandbytes' 8-bit AdamW on CUDA) over the trained parameters, with the
        ``scheduler`` of ``transformers.get_scheduler`` stepped per batch."""
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": hp.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        opt = None
        if hp.optimizer == "adamw8bit":
            if self.device.type != "cuda":
                log.warning("optimizer adamw8bit: bitsandbytes' 8-bit AdamW needs a CUDA device and "
                            "this run is on %s; using torch.optim.AdamW (32-bit states) instead",
                            self.device.type)
            else:
                try:
                    import bitsandbytes as bnb
                except ImportError as err:
                    log.warning("optimizer adamw8bit: bitsandbytes cannot be imported (%s); using "
                                "torch.optim.AdamW (32-bit states) instead", err)
                else:
                    opt = bnb.optim.AdamW8bit(groups, lr=hp.lr)
        if opt is None:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.scheduler == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError(f"scheduler {hp.scheduler!r} needs a finite plan: set trainer.max_epochs "
                             "or trainer.max_steps, or use model.scheduler=constant")
        sched = get_scheduler(hp.scheduler, opt, num_warmup_steps=int(hp.warmup * total),
                              num_training_steps=max(1, int(total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
