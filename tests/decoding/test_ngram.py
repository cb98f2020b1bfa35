"""Character n-gram LM: normalisation, hand-computed values, perplexity, ARPA round trip."""

import functools
import math
import pickle
import random

import pytest
import wordfreq

from htr_lightning.decoding.ngram import EOS, CharNgramLM, _modified_discounts

SMOOTHINGS = ["kneser-ney", "witten-bell"]


@functools.cache
def english(n: int, seed: int) -> tuple[str, ...]:
    """Lines of frequency-weighted English words, reproducible from the seed."""
    words = wordfreq.top_n_list("en", 2000)
    weights = [wordfreq.word_frequency(w, "en") for w in words]
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        line = " ".join(rng.choices(words, weights, k=rng.randint(4, 12)))
        lines.append(line[0].upper() + line[1:] + rng.choice(".?!,"))
    return tuple(lines)


TRAIN = english(400, 0)
HELD_OUT = english(100, 1)


@functools.cache
def model(order: int, smoothing: str) -> CharNgramLM:
    return CharNgramLM.train(TRAIN, order=order, smoothing=smoothing)


def contexts(lm: CharNgramLM) -> list[str]:
    return ["", "T", "the ", "of the wor", "qzxj#", "Жжж", HELD_OUT[0],
            "a" * (lm.order + 3), HELD_OUT[1][: lm.order - 1]]


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 3, 6])
def test_distribution_sums_to_one(order, smoothing):
    lm = model(order, smoothing)
    for context in contexts(lm):
        dist = lm.log_probs(context)
        assert set(dist) == set(lm.symbols) == set(lm.vocab) | {EOS}
        assert math.fsum(math.exp(v) for v in dist.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(lm.log_prob(context, s) == dist[s] for s in lm.symbols)


def test_kneser_ney_bigram_by_hand():
    # "<s> a b </s>", "<s> a a </s>", D = 0.5, base 1/3 over {a, b, </s>}.
    # Unigram continuation counts: a 2 (after <s>, a), b 1, </s> 2; T = 5, gamma = .5*3/5.
    #   P(a) = 1.5/5 + .3/3 = .4, P(b) = .5/5 + .1 = .2, P(</s>) = .4
    # Bigrams (raw counts): after <s>: a 2 -> gamma = .5*1/2 = .25
    #   P(a|<s>) = 1.5/2 + .25*.4 = .85, P(b|<s>) = .25*.2 = .05, P(</s>|<s>) = .1
    # after a: a 1, b 1, </s> 1 -> gamma = .5*3/3
    #   P(a|a) = .5/3 + .5*.4, P(b|a) = .5/3 + .5*.2, P(</s>|a) = .5/3 + .5*.4
    lm = CharNgramLM.train(["ab", "aa"], order=2, discount=0.5)
    expected = {
        "": {"a": .85, "b": .05, EOS: .1},
        "a": {"a": .5 / 3 + .2, "b": .5 / 3 + .1, EOS: .5 / 3 + .2},
        "xa": {"a": .5 / 3 + .2, "b": .5 / 3 + .1, EOS: .5 / 3 + .2},
        "b": {"a": .5 * .4, "b": .5 * .2, EOS: .5 + .5 * .4},
        "c": {"a": .4, "b": .2, EOS: .4},  # unseen context: the unigram level
    }
    for context, probs in expected.items():
        for symbol, p in probs.items():
            assert lm.log_prob(context, symbol) == pytest.approx(math.log(p), abs=1e-12)
    # <unk>: the unigram level's uniform share, gamma("") / 3.
    assert lm.unk_log_prob == pytest.approx(math.log(.1))


def test_witten_bell_by_hand():
    # Unigram raw counts over "ab</s>", "aa</s>": a 3, b 1, </s> 2; N = 6, N1+ = 3.
    # P(w) = (c(w) + 3 * 1/3) / (6 + 3)
    lm = CharNgramLM.train(["ab", "aa"], order=1, smoothing="witten-bell")
    for symbol, p in {"a": 4 / 9, "b": 2 / 9, EOS: 3 / 9}.items():
        assert lm.log_prob("anything", symbol) == pytest.approx(math.log(p), abs=1e-12)
    # Bigram: after a: a 1, b 1, </s> 1 -> P(b|a) = (1 + 3 P(b)) / (3 + 3).
    lm2 = CharNgramLM.train(["ab", "aa"], order=2, smoothing="witten-bell")
    p_b = 2 / 9  # the unigram P(b) above
    assert lm2.log_prob("a", "b") == pytest.approx(math.log((1 + 3 * p_b) / 6), abs=1e-12)


def test_modified_discounts_follow_chen_goodman():
    counts = [1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9]
    y = 10 / (10 + 2 * 5)
    assert _modified_discounts(counts) == pytest.approx(
        (1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3))
    assert _modified_discounts([1, 1, 1]) == (0.5, 0.5, 0.5)  # no n2: fallback


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_higher_order_lowers_held_out_perplexity(smoothing):
    # About 15k training characters: KN gives 21.7 / 7.3 / 6.2, WB 21.7 / 7.3 / 8.3 (its
    # higher orders overfit this little data, so 6 is not asserted to beat 3).
    ppl = {n: model(n, smoothing).perplexity(HELD_OUT) for n in (1, 3, 6)}
    assert ppl[3] < 0.5 * ppl[1] and ppl[6] < 0.5 * ppl[1], ppl


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_arpa_round_trip(tmp_path, smoothing):
    lm = model(6, smoothing)
    path = tmp_path / "lm.arpa"
    lm.save(path)
    back = CharNgramLM.load(path)
    assert (back.order, back.vocab, back.symbols) == (lm.order, lm.vocab, lm.symbols)
    assert back.unk_log_prob == pytest.approx(lm.unk_log_prob, abs=1e-6)
    tried = contexts(lm) + [line[:i] for line in HELD_OUT[:20] for i in range(len(line) + 1)]
    for context in tried:
        a, b = lm.log_probs(context), back.log_probs(context)
        assert max(abs(a[s] - b[s]) for s in lm.symbols) < 1e-4
    assert back.score(HELD_OUT[2]) == pytest.approx(lm.score(HELD_OUT[2]), abs=1e-4)


def test_arpa_header_counts_and_tokens(tmp_path):
    texts = ["ab a", "aab", "b"]
    lm = CharNgramLM.train(texts, order=3)
    path = tmp_path / "lm.arpa"
    lm.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = dict(map(int, line[6:].split("=")) for line in lines if line.startswith("ngram "))
    sections, current = {}, None
    for line in lines:
        if line.startswith("\\") and line.endswith("-grams:"):
            current = int(line[1:-7])
            sections[current] = []
        elif line.startswith("\\"):
            current = None
        elif current and line:
            sections[current].append(line.split("\t"))
    # Distinct n-gram types of "^text$" (^ = <s>); <unk> is one more unigram.
    padded = ["^" + t + "$" for t in texts]
    types = {n: {p[i:i + n] for p in padded for i in range(len(p) - n + 1)} for n in (1, 2, 3)}
    assert header == {1: len(types[1]) + 1, 2: len(types[2]), 3: len(types[3])}
    assert {n: len(entries) for n, entries in sections.items()} == header
    unigrams = {e[1] for e in sections[1]}
    assert unigrams == {"<s>", "</s>", "<unk>", "<space>", "a", "b"}
    assert ["-99.000000000", "<s>"] == [e for e in sections[1] if e[1] == "<s>"][0][:2]
    assert any(e[1] == "b <space> a" for e in sections[3])
    assert all(len(e) == 2 for e in sections[3])  # no backoff weights at the top order


def test_load_rejects_bad_header(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-0.3\ta\n-0.3\t</s>\n\n\\end\\\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        CharNgramLM.load(path)


def test_unknown_symbol_gets_finite_floor():
    lm = model(3, "kneser-ney")
    assert "Ж" not in lm.vocab
    value = lm.log_prob("the", "Ж")
    assert math.isfinite(value) and value == lm.unk_log_prob < 0
    assert math.isfinite(lm.score("Жук"))


def test_score_normalises_and_sums_log_probs():
    lm = model(3, "witten-bell")
    text = "the cat"
    expected = sum(lm.log_prob(text[:i], c) for i, c in enumerate(text)) + lm.log_prob(text, EOS)
    assert lm.score("  the \t cat ") == pytest.approx(expected)
    assert lm.score(text, eos=False) == pytest.approx(expected - lm.log_prob(text, EOS))


def test_tiny_cache_and_pickle_give_same_values():
    lm = model(6, "kneser-ney")
    small = pickle.loads(pickle.dumps(lm))
    small.cache_size = 2
    for line in HELD_OUT[:5]:
        for i in range(len(line) + 1):
            assert small.log_probs(line[:i]) == lm.log_probs(line[:i])


@pytest.mark.parametrize("order", [0, 7])
def test_bad_order_raises(order):
    with pytest.raises(ValueError, match="order"):
        CharNgramLM.train(["ab"], order=order)
    with pytest.raises(ValueError, match="order"):
        CharNgramLM(order, {"": {EOS: 0.0}})


def test_bad_smoothing_or_discount_raises():
    with pytest.raises(ValueError, match="smoothing"):
        CharNgramLM.train(["ab"], smoothing="good-turing")
    with pytest.raises(ValueError, match="discount"):
        CharNgramLM.train(["ab"], smoothing="witten-bell", discount=0.5)
    with pytest.raises(ValueError, match="discount"):
        CharNgramLM.train(["ab"], discount=1.5)
