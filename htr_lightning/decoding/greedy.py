"""Greedy (best-path) CTC decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htr_lightning.text.charset import BLANK, CTCTokenizer
from htr_lightning.text.normalize import normalize_text


@dataclass(frozen=True)
class Hypothesis:
    """A decoded line.

    Attributes:
        text: The transcription, whitespace-normalised as references are
            (:func:`~htr_lightning.text.normalize_text`): CTC often emits a space before or
            after the line, or two between words, and no reader wants them.
        confidence: In [0, 1]; for greedy, the geometric mean of the best path's frame
            probabilities.
    """

    text: str
    confidence: float


class GreedyDecoder:
    """Takes the most probable class per frame, merges repeats, drops blanks.

    >>> import torch
    >>> tok = CTCTokenizer("ab")
    >>> lp = torch.log(torch.tensor([[[.1, .8, .1], [.1, .8, .1], [.9, .05, .05], [.1, .1, .8]]]))
    >>> GreedyDecoder()(lp, torch.tensor([4]), tok)[0].text
    'ab'
    """

    name = "greedy"

    def config(self) -> dict:
        """Plain-value description, stored in the model's hyperparameters."""
        return {"name": self.name}

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor,
                 tokenizer: CTCTokenizer) -> list[Hypothesis]:
        """Decodes a batch.

        Args:
            log_probs: (B, T, C) log-probabilities.
            lengths: (B,) valid frames per line.
            tokenizer: Maps labels to symbols.
        """
        best, labels = log_probs.detach().float().max(dim=-1)  # (B, T)
        out = []
        for b in range(log_probs.shape[0]):
            n = int(lengths[b])
            seq = labels[b, :n]
            keep = torch.ones_like(seq, dtype=torch.bool)
            keep[1:] = seq[1:] != seq[:-1]
            keep &= seq != BLANK
            conf = float(best[b, :n].mean().exp()) if n else 0.0
            out.append(Hypothesis(normalize_text(tokenizer.decode(seq[keep].tolist())), conf))
        return out
