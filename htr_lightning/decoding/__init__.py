"""Swappable CTC decoders. Each is an object with ``config()`` and
``__call__(log_probs, lengths, tokenizer) -> list[Hypothesis]``; a model switches with
``model.set_decoder(...)`` or ``--model.decoder='{"name": "beam", "beam_size": 16}'``."""

from __future__ import annotations

from htr_lightning.decoding.beam import BeamSearchDecoder
from htr_lightning.decoding.greedy import GreedyDecoder, Hypothesis
from htr_lightning.decoding.ngram import CharNgramLM
from htr_lightning.decoding.rescore import CausalLMScorer, RescoringDecoder

DECODERS = {GreedyDecoder.name: GreedyDecoder, BeamSearchDecoder.name: BeamSearchDecoder,
            RescoringDecoder.name: RescoringDecoder}


def build_decoder(spec: str | dict) -> GreedyDecoder | BeamSearchDecoder | RescoringDecoder:
    """Builds a decoder from its name or its ``config()`` dict.

    >>> build_decoder("greedy").config()
    {'name': 'greedy'}
    >>> build_decoder({"name": "beam", "beam_size": 4}).beam_size
    4
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; available: {', '.join(DECODERS)}")
    return DECODERS[name](**spec)


__all__ = ["DECODERS", "BeamSearchDecoder", "CausalLMScorer", "CharNgramLM", "GreedyDecoder",
           "Hypothesis", "RescoringDecoder", "build_decoder"]
