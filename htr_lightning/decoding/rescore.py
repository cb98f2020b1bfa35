"""n-best rescoring of the beam's hypotheses with any causal LM (transformers)."""

from __future__ import annotations

import torch

from htr_lightning.decoding.beam import BeamEntry, BeamSearchDecoder


class CausalLMScorer:
    """Log-probability of whole lines under a causal LM loaded with ``from_pretrained``.

    Each line is scored as ``log P(tokens | BOS)`` plus the end-of-sequence token; lines are
    padded in batches with the attention mask, so a tokenizer without a pad token (GPT-2,
    Llama 3) works.

    Args:
        name_or_path: Hub name or local directory of an ``AutoModelForCausalLM`` and its
            tokenizer (nothing is downloaded when ``HF_HUB_OFFLINE=1``).
        device: Where the LM runs.
        batch_size: Lines per forward pass.
    """

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        tok = self.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.eos = tok.eos_token_id
        if self.bos is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a BOS nor an EOS token")

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[float]:
        """Natural-log probabilities of the texts, one per text."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            seqs = []
            for text in texts[start : start + self.batch_size]:
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                seqs.append([self.bos, *ids] + ([self.eos] if self.eos is not None else []))
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [self.bos] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            log_probs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            out += (log_probs * mask[:, 1:]).sum(-1).tolist()
        return out


class RescoringDecoder(BeamSearchDecoder):
    """Beam search (with or without an n-gram LM) whose n-best list a causal LM re-ranks:
    score = beam score + ``weight`` · log P_causalLM(text).

    Args:
        lm: Name or path of the causal LM (see :class:`CausalLMScorer`).
        weight: Weight of the causal LM's log-probability.
        nbest: Hypotheses of the beam that are re-ranked.
        beam: Keyword arguments of :class:`BeamSearchDecoder` (beam size, n-gram LM, ...).
        device: Where the causal LM runs.
    """

    name = "rescore"

    def __init__(self, lm: str, weight: float = 0.3, nbest: int = 8, beam: dict | None = None,
                 device: str = "cpu") -> None:
        super().__init__(**{**(beam or {}), "nbest": nbest})
        self.causal_lm = lm
        self.weight = weight
        self.device = device
        self.scorer = CausalLMScorer(lm, device=device)

    def config(self) -> dict:
        """Plain-value description, stored in the model's hyperparameters."""
        beam = {k: v for k, v in super().config().items() if k not in ("name", "nbest")}
        return {"name": self.name, "lm": self.causal_lm, "weight": self.weight,
                "nbest": self.nbest, "beam": beam, "device": self.device}

    def rerank(self, entries: list[BeamEntry]) -> BeamEntry:
        """The entry with the best beam score + ``weight`` · causal-LM log-probability."""
        causal = self.scorer([e.text for e in entries])
        return max(zip(entries, causal), key=lambda ec: ec[0].score + self.weight * ec[1])[0]
