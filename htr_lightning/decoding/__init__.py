"""Swappable CTC decoders. Each is an object with ``config()`` and
``__call__(log_probs, lengths, tokenizer) -> list[Hypothesis]``."""

from __future__ import annotations

from htr_lightning.decoding.greedy import GreedyDecoder, Hypothesis

DECODERS = {GreedyDecoder.name: GreedyDecoder}


def build_decoder(spec: str | dict) -> GreedyDecoder:
    """Builds a decoder from its name or its ``config()`` dict.

    >>> build_decoder("greedy").config()
    {'name': 'greedy'}
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; available: {', '.join(DECODERS)}")
    return DECODERS[name](**spec)


__all__ = ["DECODERS", "GreedyDecoder", "Hypothesis", "build_decoder"]
