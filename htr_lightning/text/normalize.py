"""Text normalisation shared by targets, references and metrics."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC-normalises and collapses whitespace runs to one space, stripped at both ends.

    >>> normalize_text("  a\\tb\\n c ")
    'a b c'
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
