"""Charset / CTC tokenizer and text normalisation."""

from htr_lightning.text.charset import BLANK, CTCTokenizer
from htr_lightning.text.normalize import normalize_text

__all__ = ["BLANK", "CTCTokenizer", "normalize_text"]
