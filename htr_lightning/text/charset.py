"""CTC tokenizer: characters <-> integer labels, blank = 0.

The charset travels as a plain string (a model hyperparameter), so a checkpoint rebuilds its
tokenizer with no side file.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from htr_lightning.text.normalize import normalize_text

log = logging.getLogger("htr_lightning.text")

BLANK = 0


class CTCTokenizer:
    """Maps characters to labels 1..N; label 0 is the CTC blank.

    Characters outside the charset are dropped from targets, counted, and reported once per
    character (never an exception), so an unseen symbol in a validation line costs one error in
    the CER instead of a crashed run.

    Args:
        charset: Every symbol, each once, in label order (label of ``charset[i]`` is ``i + 1``).

    >>> tok = CTCTokenizer("abc ")
    >>> tok.encode("cab")
    [3, 1, 2]
    >>> tok.decode([3, 1, 2])
    'cab'
    >>> len(tok)  # classes including the blank
    5
    """

    def __init__(self, charset: str) -> None:
        if not charset:
            raise ValueError("charset is empty: give the symbols as a string, e.g. 'abc '")
        dupes = [c for c, n in Counter(charset).items() if n > 1]
        if dupes:
            raise ValueError(f"charset has duplicate symbols: {''.join(dupes)!r}")
        self.charset = charset
        self._index = {c: i + 1 for i, c in enumerate(charset)}
        self.unknown: Counter[str] = Counter()

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CTCTokenizer:
        """Builds the charset from transcriptions, symbols sorted by code point.

        >>> CTCTokenizer.from_texts(["ba", "ab c"]).charset
        ' abc'
        """
        seen: set[str] = set()
        for t in texts:
            seen.update(normalize_text(t))
        return cls("".join(sorted(seen)))

    def __len__(self) -> int:
        """Number of output classes: symbols + 1 for the blank."""
        return len(self.charset) + 1

    def encode(self, text: str) -> list[int]:
        """Labels of the normalised text; unknown symbols are dropped and counted."""
        out = []
        for c in normalize_text(text):
            i = self._index.get(c)
            if i is None:
                if c not in self.unknown:
                    log.warning("symbol %r is not in the charset; it is dropped from targets", c)
                self.unknown[c] += 1
            else:
                out.append(i)
        return out

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated targets and their lengths, the layout ``F.ctc_loss`` takes.

        Returns:
            targets (sum(L),) long and lengths (B,) long.
        """
        encoded = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        flat = torch.tensor([i for e in encoded for i in e], dtype=torch.long)
        return flat, lengths

    def decode(self, labels: Iterable[int]) -> str:
        """Text of labels (already collapsed; blanks are skipped)."""
        return "".join(self.charset[i - 1] for i in labels if i != BLANK)

    def missing(self, texts: Iterable[str]) -> Counter[str]:
        """Counts the symbols of ``texts`` that this charset lacks (no side effects).

        >>> CTCTokenizer("ab").missing(["abc", "cd"])
        Counter({'c': 2, 'd': 1})
        """
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(c for c in normalize_text(t) if c not in self._index)
        return counts
