import itertools
import math

import pytest
import torch

from htr_lightning.decoding import BeamSearchDecoder, GreedyDecoder, build_decoder
from htr_lightning.decoding.ngram import CharNgramLM
from htr_lightning.models import TeacherSystem
from htr_lightning.text import CTCTokenizer


def _peaked(batch, frames, classes, seed):
    """Model-like outputs: one class per frame holds more than half the probability."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, classes, generator=g)
    winners = torch.randint(0, classes, (batch, frames), generator=g)
    logits.scatter_(2, winners[..., None], 8.0)
    probs = logits.softmax(-1)
    assert bool((probs.max(-1).values > 0.5).all())
    return probs.log()


@pytest.mark.parametrize("seed", range(5))
def test_beam_one_equals_greedy(seed):
    tok = CTCTokenizer("abcde")
    log_probs = _peaked(4, 30, 6, seed)
    lengths = torch.tensor([30, 25, 12, 1])
    greedy = GreedyDecoder()(log_probs, lengths, tok)
    beam = BeamSearchDecoder(beam_size=1)(log_probs, lengths, tok)
    assert [h.text for h in beam] == [h.text for h in greedy]


@pytest.mark.parametrize("decoder", [GreedyDecoder(), BeamSearchDecoder(beam_size=4)])
def test_stray_spaces_are_not_transcribed(decoder):
    """CTC often emits a space at either end of a line or two between words; the output is
    whitespace-normalised like the references."""
    tok = CTCTokenizer(" ab")
    path = [1, 2, 1, 0, 1, 3, 1]  # " a", blank, " b " -> " a  b "
    log_probs = torch.full((1, len(path), 4), 0.01).index_put_(
        (torch.zeros(len(path), dtype=torch.long), torch.arange(len(path)), torch.tensor(path)),
        torch.tensor(0.97)).log()
    (hyp,) = decoder(log_probs, torch.tensor([len(path)]), tok)
    assert hyp.text == "a b"


def _text_log_probs(log_probs, charset):
    """log P(text | frames) of every text, by summing the probability of all its alignments."""
    totals = {}
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        text, prev = [], None
        for c in path:
            if c != 0 and c != prev:
                text.append(charset[c - 1])
            prev = c
        p = math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
        totals["".join(text)] = totals.get("".join(text), 0.0) + p
    return {text: math.log(p) for text, p in totals.items()}


def _exhaustive(log_probs, charset):
    """Most probable text and its log-probability."""
    totals = _text_log_probs(log_probs, charset)
    best = max(totals, key=totals.get)
    return best, totals[best]


@pytest.mark.parametrize("seed", range(8))
def test_beam_without_lm_matches_exhaustive_search(seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(6, 3, generator=g).mul(1.5).log_softmax(-1)  # flat, ambiguous
    text, logp = _exhaustive(log_probs, "ab")
    best = BeamSearchDecoder(beam_size=64, prune=0).search(log_probs.numpy(), "ab")[0]
    assert best.text == text
    assert best.ctc == pytest.approx(logp, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_beam_with_lm_matches_exhaustive_fused_search(seed, tmp_path):
    # with a beam wider than the number of prefixes, prefix beam search with shallow fusion is
    # exact: argmax over texts of log P(text | frames) + w·log P_LM(text, end) + bonus·len
    lm = CharNgramLM.train(["abba", "ab", "ba", "aab", "b"], order=3)
    lm.save(tmp_path / "lm.arpa")
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(5, 3, generator=g).mul(1.5).log_softmax(-1)
    weight, bonus = 0.8, 0.3
    fused = {text: ctc + weight * lm.score(text) + bonus * len(text)
             for text, ctc in _text_log_probs(log_probs, "ab").items()}
    decoder = BeamSearchDecoder(beam_size=64, prune=0, lm_path=str(tmp_path / "lm.arpa"),
                                lm_weight=weight, insertion_bonus=bonus, nbest=3)
    entries = decoder.search(log_probs.numpy(), "ab")
    ranked = sorted(fused, key=fused.get, reverse=True)[:3]
    assert [e.text for e in entries] == ranked
    assert [e.score for e in entries] == pytest.approx([fused[t] for t in ranked], abs=1e-6)


def test_insertion_bonus_and_nbest():
    lp = torch.log(torch.tensor([[0.4, 0.6], [0.4, 0.6]]))  # blank vs "a" twice
    plain = BeamSearchDecoder(beam_size=4, nbest=3).search(lp.numpy(), "a")
    assert [e.text for e in plain] == ["a", ""]  # "a" = 0.6·0.6 + 0.4·0.6 + 0.6·0.4 = 0.84
    assert math.exp(plain[0].ctc) == pytest.approx(0.84)
    penalised = BeamSearchDecoder(beam_size=4, insertion_bonus=-5.0).search(lp.numpy(), "a")
    assert penalised[0].text == ""


def test_decoder_swapped_on_a_model_and_saved(tmp_path, tiny_teacher_kwargs):
    model = TeacherSystem("ab ", **tiny_teacher_kwargs)
    model.set_decoder(BeamSearchDecoder(beam_size=3))
    assert model.hparams["decoder"]["name"] == "beam"
    assert isinstance(model.decoder, BeamSearchDecoder)
    model.set_decoder("greedy")
    assert model.hparams["decoder"] == {"name": "greedy"}
    with pytest.raises(ValueError, match="unknown decoder 'viterbi'"):
        build_decoder("viterbi")
