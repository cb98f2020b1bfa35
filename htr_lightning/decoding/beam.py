"""CTC prefix beam search, optionally fused with a character n-gram LM (shallow fusion).

Written here rather than taken from torchaudio (no CPU build on our machines) or pyctcdecode
(word-level KenLM only, no character LM): the algorithm is short and the LM it fuses is our
:class:`~htr_lightning.decoding.ngram.CharNgramLM`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.decoding.ngram import EOS, CharNgramLM
from htr_lightning.text.charset import BLANK, CTCTokenizer
from htr_lightning.text.normalize import normalize_text

NEG_INF = -math.inf


@functools.lru_cache(maxsize=4)
def _load_lm(path: str) -> CharNgramLM:
    # Decoders built for a grid of weights share one parsed LM and its memoised distributions.
    return CharNgramLM.load(path)


class _LMRows:
    """The LM's log-probabilities of every class after each context met so far, one row per
    LM context in one growing matrix, so a beam's rows are gathered by one index operation.

    Args:
        lm: The language model.
        charset: Symbols of classes 1..C-1 (column 0, the blank, is unused).
    """

    def __init__(self, lm: CharNgramLM, charset: str) -> None:
        self.lm = lm
        self.charset = charset
        self.matrix = np.empty((256, len(charset) + 1))
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def row(self, prefix: str) -> int:
        """The matrix row for the LM context of ``prefix`` (computed on first use)."""
        key = self.lm.context_key(prefix)
        i = self._rows.get(key)
        if i is None:
            i = len(self._rows)
            if i == len(self.matrix):
                self.matrix = np.concatenate([self.matrix, np.empty_like(self.matrix)])
            dist = self.lm.log_probs(prefix)
            unk = self.lm.unk_log_prob
            self.matrix[i, 0] = 0.0
            self.matrix[i, 1:] = [dist.get(c, unk) for c in self.charset]
            self._rows[key] = i
        return i


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
        self._lm_tables: dict[str, _LMRows] = {}

    def config(self) -> dict:
        """Plain-value description, stored in the model's hyperparameters."""
        return {"name": self.name, "beam_size": self.beam_size, "lm_path": self.lm_path,
                "lm_weight": self.lm_weight, "insertion_bonus": self.insertion_bonus,
                "prune": self.prune, "nbest": self.nbest}

    def _lm_table(self, charset: str) -> _LMRows:
        table = self._lm_tables.get(charset)
        if table is None or len(table) >= self.lm.cache_size:  # only cleared between lines
            table = self._lm_tables[charset] = _LMRows(self.lm, charset)
        return table

    def search(self, log_probs: np.ndarray, charset: str) -> list[BeamEntry]:
        """Beam search over one line.

        The beam is held in arrays and each frame's extensions are scored for all prefixes at
        once with numpy; Python only touches the texts of the (at most ``beam_size``) prefixes
        kept. Two prefixes of the beam can only collide when one is the other plus one symbol,
        so merging the alignments of one text needs one parent lookup per kept prefix.

        Args:
            log_probs: (T, C) log-probabilities of the valid frames, class 0 = blank.
            charset: Symbols of classes 1..C-1.

        Returns:
            Up to ``nbest`` entries, best first.
        """
        frames = np.asarray(log_probs, dtype=np.float64)
        plausible = frames >= (math.log(self.prune) if self.prune > 0 else NEG_INF)
        plausible[:, BLANK] = False
        table = self._lm_table(charset) if self.lm is not None else None
        bonus, weight = self.insertion_bonus, self.lm_weight
        # The beam: prefix texts and, per prefix, log P of its alignments ending in blank (pb)
        # and in its last symbol (ps), its LM part, its last class (0 for the empty prefix),
        # the beam index of the prefix one symbol shorter (-1 when not in the beam) and its
        # row in the LM table.
        prefixes = [""]
        pb, ps = np.zeros(1), np.full(1, NEG_INF)
        lm_part, last, parent = np.zeros(1), np.zeros(1, dtype=np.int64), np.full(1, -1)
        lm_rows = np.array([table.row("")]) if table is not None else None
        position = np.full(frames.shape[1], -1)  # class -> column among this frame's classes
        for frame, mask in zip(frames, plausible):
            total = np.logaddexp(pb, ps)
            stay_blank = total + frame[BLANK]
            # the last symbol again, collapsed into the same prefix
            stay_symbol = np.where(last > 0, ps + frame[last], NEG_INF)
            classes = mask.nonzero()[0]
            if classes.size == 0:
                best = int(frame.argmax())
                if best == BLANK:  # no symbol is plausible here: no prefix grows, none is dropped
                    pb, ps = stay_blank, stay_symbol
                    continue
                classes = np.array([best])
            # (K, J) extensions by each class; a repeated symbol only counts as new after a blank
            grown = np.where(classes == last[:, None], pb[:, None], total[:, None]) + frame[classes]
            child = (parent >= 0).nonzero()[0]
            if child.size:  # extensions giving a prefix that is already in the beam join it
                position[classes] = np.arange(classes.size)
                column = position[last[child]]
                position[classes] = -1
                joins = column >= 0
                child, column = child[joins], column[joins]
                source = parent[child]
                stay_symbol[child] = np.logaddexp(stay_symbol[child], grown[source, column])
                grown[source, column] = NEG_INF
            grown_lm = lm_part[:, None] + bonus
            if table is not None:
                grown_lm = grown_lm + weight * table.matrix[lm_rows[:, None], classes]
            else:
                grown_lm = np.broadcast_to(grown_lm, grown.shape)
            n = len(prefixes)
            scores = np.concatenate([np.logaddexp(stay_blank, stay_symbol) + lm_part,
                                     (grown + grown_lm).ravel()])
            keep = (np.argpartition(scores, -self.beam_size)[-self.beam_size:]
                    if scores.size > self.beam_size else np.arange(scores.size))
            keep = keep[scores[keep] > NEG_INF]
            stays = keep[keep < n]
            source, column = np.divmod(keep[keep >= n] - n, classes.size)
            new_classes = classes[column]
            texts = [prefixes[k] for k in stays.tolist()]
            texts += [prefixes[k] + charset[c - 1]
                      for k, c in zip(source.tolist(), new_classes.tolist())]
            pb = np.concatenate([stay_blank[stays], np.full(source.size, NEG_INF)])
            ps = np.concatenate([stay_symbol[stays], grown[source, column]])
            lm_part = np.concatenate([lm_part[stays], grown_lm[source, column]])
            last = np.concatenate([last[stays], new_classes])
            if table is not None:
                lm_rows = np.concatenate([lm_rows[stays],
                                          [table.row(t) for t in texts[stays.size:]]]).astype(int)
            prefixes = texts
            index = {text: i for i, text in enumerate(prefixes)}
            parent = np.array([index.get(text[:-1], -1) if text else -1 for text in prefixes])
        final = []
        for i, prefix in enumerate(prefixes):
            end = weight * self.lm.log_prob(prefix, EOS) if table is not None else 0.0
            final.append(BeamEntry(prefix, float(np.logaddexp(pb[i], ps[i])),
                                   float(lm_part[i]) + end))
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
            out.append(Hypothesis(normalize_text(best.text), math.exp(best.ctc / n) if n else 0.0))
        return out

    def rerank(self, entries: list[BeamEntry]) -> BeamEntry:
        """Chooses the output among the final beam (here: the best by beam score)."""
        return entries[0]
