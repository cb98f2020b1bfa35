"""Transcribe line images with an exported ONNX model: onnxruntime, no Lightning, no transformers.

An export (:mod:`htr_lightning.inference.export`) writes ``model.onnx`` and, beside it,
``model.json`` (the *sidecar*): the charset, the preprocessing and the decoder. The runtime
preprocesses images with the training code's :class:`~htr_lightning.data.LinePreprocessor`,
splits pages and batches lines as training does (:mod:`htr_lightning.inference.pages`), runs
the network in onnxruntime and decodes with :mod:`htr_lightning.decoding`, so it gives the texts ``model.transcribe`` gives.

Example:
    >>> recognizer = OnnxRecognizer("model.onnx")  # doctest: +SKIP
    >>> recognizer.transcribe("line.png").text  # doctest: +SKIP
    'the text of the line'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.decoding import build_decoder
from htr_lightning.inference.pages import Transcription, transcribe_sources
from htr_lightning.text import CTCTokenizer

FORMAT = "htr_lightning-export"
FORMAT_VERSION = 1


def sidecar_path(onnx_path: str | Path) -> Path:
    """Where the metadata of an ONNX export lives: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def read_metadata(path: str | Path) -> dict:
    """Reads and checks export metadata (an ONNX sidecar or a bundle's ``config.json``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not htr_lightning export metadata, or of a newer format than this code reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export metadata not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not htr_lightning export metadata (no format {FORMAT!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta['format_version']}; this htr_lightning "
                         f"reads up to {FORMAT_VERSION}: upgrade htr_lightning")
    return meta


def preprocessor_from_metadata(meta: dict) -> LinePreprocessor:
    """The :class:`LinePreprocessor` that export metadata describes."""
    p = meta["preprocessing"]
    return LinePreprocessor(height=p["height"], fixed_width=p["fixed_width"],
                            max_width=p["max_width"], min_width=p["min_width"])


class OnnxRecognizer:
    """Line recogniser over an exported ONNX model and its sidecar.

    Args:
        path: The ``.onnx`` file; its sidecar (:func:`sidecar_path`) is read too.
        decoder: Decoder name or config dict (see :func:`~htr_lightning.decoding.build_decoder`);
            None uses the one the model was exported with.
        threads: onnxruntime intra-op threads; None lets onnxruntime choose.
        providers: onnxruntime execution providers; None means CPU.

    Attributes:
        metadata: The sidecar's content.
        preprocess: The training preprocessing, as the sidecar describes it.
        tokenizer: Labels <-> symbols (blank = 0).
        decoder: The decoder in use.
    """

    def __init__(self, path: str | Path, decoder: str | dict | None = None,
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.metadata = read_metadata(sidecar_path(self.path))
        self.preprocess = preprocessor_from_metadata(self.metadata)
        self.width_multiple = int(self.metadata["preprocessing"]["width_multiple"])
        self.tokenizer = CTCTokenizer(self.metadata["charset"])
        self.decoder = build_decoder(self.metadata["decoder"] if decoder is None else decoder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))

    def forward(self, images: torch.Tensor | np.ndarray, widths: torch.Tensor | np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the network.

        Args:
            images: (B, 1, H, W) float32, ink = 1, zero padding on the right.
            widths: (B,) content widths in pixels.

        Returns:
            log_probs (B, T, C) and lengths (B,), as torch tensors.
        """
        feeds = {"images": np.ascontiguousarray(np.asarray(images, dtype=np.float32)),
                 "widths": np.ascontiguousarray(np.asarray(widths, dtype=np.int64))}
        log_probs, lengths = self.session.run(["log_probs", "lengths"], feeds)
        return torch.from_numpy(log_probs), torch.from_numpy(lengths)

    def transcribe(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
                   segment: str = "auto", batch_size: int = 16, rectify: bool | None = None
                   ) -> Transcription | list[Transcription]:
        """Transcribes line, paragraph or page images (or PAGE-XML files), as
        :meth:`CTCSystem.transcribe <htr_lightning.models.CTCSystem.transcribe>` does (shared
        code: :func:`~htr_lightning.inference.pages.transcribe_sources`).

        Args:
            images: A path or PIL image, or a list of them.
            segment: One of :data:`~htr_lightning.inference.pages.SEGMENT_MODES`.
            batch_size: Lines per forward pass.
            rectify: Straighten PAGE-XML lines along their baselines; None (the default) cuts
                them as the training lines were (the metadata's ``preprocessing.rectify``).

        Returns:
            One :class:`~htr_lightning.inference.pages.Transcription` for a single input, else
            a list in input order.
        """
        if rectify is None:  # exports older than this key were all of unstraightened lines
            rectify = bool(self.metadata["preprocessing"].get("rectify", False))
        return transcribe_sources(
            images, lambda batch: self.decoder(*self.forward(batch["images"], batch["widths"]),
                                               self.tokenizer),
            self.preprocess, segment, batch_size, self.width_multiple, rectify)
