"""CTC prefix beam search, optionally fused with a character n-gram LM (shallow fusion).

Written here rather than taken from torchaudio (no CPU build on our machines) or pyctcdecode
(word-level KenLM only, no character LM): the algorithm is short and the LM it fuses is our
:class:`~htr_lightning.decoding.ngram.CharNgramLM`.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.decoding.ngram import EOS, CharNgramLM
from htr_lightning.text.charset import BLANK, CTCTokenizer

NEG_INF = -math.inf


def _logadd(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


@functools.lru_cache(maxsize=4)
def _load_lm(path: str) -> CharNgramLM:
    # Decoders built for a grid of weights share one parsed LM and its memoised distributions.
    return CharNgramLM.load(path)


@dataclass(frozen=True)
class BeamEntry:
    """One hypothesis of the final beam.

    Attributes:
        text: The transcription.
        ctc: log P(text | image) summed over all CTC alignments.
        lm: LM part of the score: ``lm_weight`` · log P_LM(text, end) + ``insertion_bonus`` · len.
    """

    text: str
    ctc: float
    lm: float

    @property
    def score(self) -> float:
        """The fused score the beam is ranked by."""
        return self.ctc + self.lm


class BeamSearchDecoder:
    """CTC prefix beam search over the charset, with optional character LM fusion.

    Each prefix keeps the probabilities of its alignments ending in blank and in its last
    symbol, so different alignments of the same text are summed, not competing. With a large
    enough beam and no pruning it finds the most probable text exactly; with ``beam_size=1`` it
    gives the greedy result whenever every frame's most probable class has probability > 0.5.

    Args:
        beam_size: Prefixes kept after each frame.
        lm_path: ARPA file of a :class:`~htr_lightning.decoding.ngram.CharNgramLM` (None: no LM).
        lm_weight: Weight of the LM log-probability in the score.
        insertion_bonus: Added to the score per emitted symbol (counters the LM's length bias).
        prune: Classes whose probability at a frame is below this are not tried there (the most
            probable class always is); 0 tries every class.
        nbest: Hypotheses kept by :meth:`search` (for rescoring).

    >>> tok = CTCTokenizer("ab")
    >>> lp = torch.log(torch.tensor([[[.1, .8, .1], [.6, .3, .1], [.1, .1, .8]]]))
    >>> BeamSearchDecoder(beam_size=4)(lp, torch.tensor([3]), tok)[0].text
    'ab'
    """

    name = "beam"

    def __init__(self, beam_size: int = 16, lm_path: str | None = None, lm_weight: float = 0.5,
                 insertion_bonus: float = 0.0, prune: float = 1e-3, nbest: int = 1) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        self.beam_size = beam_size
        self.lm_path = lm_path
        self.lm_weight = lm_weight
        self.insertion_bonus = insertion_bonus
        self.prune = prune
        self.nbest = nbest
        self.lm = _load_lm(str(lm_path)) if lm_path is not None else None

    def config(self) -> dict:
        """Plain-value description, stored in the model's hyperparameters."""
        return {"name": self.name, "beam_size": self.beam_size, "lm_path": self.lm_path,
                "lm_weight": self.lm_weight, "insertion_bonus": self.insertion_bonus,
                "prune": self.prune, "nbest": self.nbest}

    def _extend_lm(self, prefix: str, symbol: str) -> float:
        lm = self.insertion_bonus
        if self.lm is not None:
            lm += self.lm_weight * self.lm.log_prob(prefix, symbol)
        return lm

    def search(self, log_probs: np.ndarray, charset: str) -> list[BeamEntry]:
        """Beam search over one line.

        Args:
            log_probs: (T, C) log-probabilities of the valid frames, class 0 = blank.
            charset: Symbols of classes 1..C-1.

        Returns:
            Up to ``nbest`` entries, best first.
        """
        index = {c: i + 1 for i, c in enumerate(charset)}
        log_prune = math.log(self.prune) if self.prune > 0 else NEG_INF
        beams: dict[str, list[float]] = {"": [0.0, NEG_INF]}  # prefix -> [ends in blank, in symbol]
        lm_part: dict[str, float] = {"": 0.0}
        for frame in log_probs:
            best = int(frame.argmax())
            classes = [c for c in np.flatnonzero(frame >= log_prune).tolist() if c != BLANK]
            if best != BLANK and best not in classes:
                classes.append(best)
            blank = float(frame[BLANK])
            if not classes:  # no symbol is plausible here: no prefix grows, none is dropped
                beams = {prefix: [_logadd(p_blank, p_symbol) + blank,
                                  p_symbol + float(frame[index[prefix[-1]]]) if prefix else NEG_INF]
                         for prefix, (p_blank, p_symbol) in beams.items()}
                continue
            nxt: dict[str, list[float]] = {}
            for prefix, (p_blank, p_symbol) in beams.items():
                total = _logadd(p_blank, p_symbol)
                entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
                entry[0] = _logadd(entry[0], total + blank)
                last = index[prefix[-1]] if prefix else None
                if last is not None:  # the last symbol again, collapsed into the same prefix
                    entry[1] = _logadd(entry[1], p_symbol + float(frame[last]))
                for c in classes:
                    symbol = charset[c - 1]
                    longer = prefix + symbol
                    # a repeated symbol only counts as new after a blank
                    start = p_blank if c == last else total
                    if start == NEG_INF:
                        continue
                    grown = nxt.setdefault(longer, [NEG_INF, NEG_INF])
                    grown[1] = _logadd(grown[1], start + float(frame[c]))
                    if longer not in lm_part:
                        lm_part[longer] = lm_part[prefix] + self._extend_lm(prefix, symbol)
            beams = dict(heapq.nlargest(self.beam_size, nxt.items(),
                                        key=lambda kv: _logadd(*kv[1]) + lm_part[kv[0]]))
        final = []
        for prefix, probs in beams.items():
            end = self.lm_weight * self.lm.log_prob(prefix, EOS) if self.lm is not None else 0.0
            final.append(BeamEntry(prefix, _logadd(*probs), lm_part[prefix] + end))
        final.sort(key=lambda e: e.score, reverse=True)
        return final[: max(1, self.nbest)]

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor,
                 tokenizer: CTCTokenizer) -> list[Hypothesis]:
        """Decodes a batch: (B, T, C) log-probabilities and (B,) lengths -> one hypothesis per
        line; confidence is the geometric mean per frame of P(text | image)."""
        array = log_probs.detach().float().cpu().numpy()
        out = []
        for b in range(array.shape[0]):
            n = int(lengths[b])
            best = self.rerank(self.search(array[b, :n], tokenizer.charset))
            out.append(Hypothesis(best.text, math.exp(best.ctc / n) if n else 0.0))
        return out

    def rerank(self, entries: list[BeamEntry]) -> BeamEntry:
        """Chooses the output among the final beam (here: the best by beam score)."""
        return entries[0]
