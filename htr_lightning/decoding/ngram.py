"""Character n-gram language model for shallow fusion in CTC beam search.

The model predicts one character (or the end of the line) from the characters before it.
Estimation (interpolated Kneser-Ney or Witten-Bell), querying and ARPA input/output are
written here by hand rather than taken from a package:

* ``kenlm`` on PyPI (0.3.0, checked with ``pip download kenlm``: a source distribution
  only, no wheel) compiles just the query side: its ``setup.py`` builds the ``kenlm``
  extension from ``util/*.cc``, ``lm/*.cc`` and ``python/*.cc``. The estimator ``lmplz``
  (``lm/builder/``) is not part of it and would need a separate CMake + Boost build of the
  C++ tool. A scratch build of that package reads the ARPA files written here. Over 200
  held-out lines its scores match :meth:`CharNgramLM.score` to within 2e-5 (log10), which
  is kenlm's float32 precision.
* ``nltk.lm`` (3.10.4, tried in a scratch folder, not the project's venv) finds Kneser-Ney
  continuation counts by scanning every higher-order n-gram on each query
  (``KneserNey._continuation_counts``). A character 6-gram model trained on 500 lines took
  about 5 ms per ``score`` call. Its distributions did not sum to one over the characters
  plus ``</s>``: 0.998 (Kneser-Ney) and 0.897 (Witten-Bell) in the empty context, because
  mass goes to predicting ``<s>``. A character never seen in training gets probability 0.

Conventions:

* Texts go through :func:`htr_lightning.text.normalize_text` (NFC, one space between words)
  before training and in :meth:`CharNgramLM.score`. :meth:`CharNgramLM.log_prob` takes the
  context exactly as given, because the beam search calls it with raw prefixes.
* A context is everything decoded so far on the line. Contexts shorter than ``order - 1``
  characters are padded with a single sentence-start marker ``<s>``, as in kenlm and SRILM, so
  ``P(first char | <s>)`` is modelled. ``<s>`` is never predicted. The end of a line is
  the event ``EOS`` (``"</s>"``). It is part of every distribution.
* Each distribution sums to one over ``vocab`` + ``EOS``, for every context, including
  contexts never seen in training. A symbol outside the vocabulary gets the fixed floor
  ``unk_log_prob``, which lies outside that sum (the ``<unk>`` unigram of the ARPA file).
* In ARPA files each character is one token and the space is ``<space>``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from htr_lightning.text import normalize_text

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SPACE_TOKEN = "<space>"
MAX_ORDER = 6  # kenlm's default KENLM_MAX_ORDER: saved models load into a stock build

_BOS = "\x02"  # stands for <s> inside context strings (ASCII "start of text")
_EOS = "\x03"  # stands for </s> while counting (ASCII "end of text")
_LN10 = math.log(10.0)
_ARPA_BOS_LOG10 = -99.0  # kenlm's and SRILM's probability for <s>, which is never predicted


class CharNgramLM:
    """A character n-gram model stored as backoff tables.

    ``ngrams[h][w]`` is the natural-log probability of symbol ``w`` after context ``h``, for
    every n-gram seen in training. ``backoffs[h]`` is the natural-log weight given to the
    next lower order after a seen context ``h``. For an interpolated model that weight is the
    interpolation weight, so these two tables hold the model exactly, as an ARPA file does.
    A context string holds up to ``order - 1`` characters. At the start of a line it begins
    with ``"\\x02"``, which stands for ``<s>``. The empty context ``""`` holds the unigrams.
    Build the model with :meth:`train` or :meth:`load`.

    Args:
        order: n-gram order, 1 to 6.
        ngrams: Context -> symbol -> natural-log probability. Symbols are single characters
            or ``EOS``. Must hold the empty context.
        backoffs: Context -> natural-log backoff weight. A missing context has weight 1.
        unk_log_prob: Natural-log probability returned for a symbol outside ``vocab``.
        cache_size: The cache of :meth:`log_probs` holds between ``cache_size`` and twice
            that many context distributions. Each takes about 3 kB for 65 symbols, so the
            default tops out near 100 MB.

    Attributes:
        order: As given.
        vocab: The characters seen in training, sorted (``EOS`` excluded).
        symbols: ``vocab`` characters then ``EOS``: the keys of every :meth:`log_probs` dict.
        unk_log_prob: As given.

    >>> lm = CharNgramLM.train(["the cat", "the hat", "a cat"], order=3)
    >>> lm.vocab
    ' aceht'
    >>> dist = lm.log_probs("the c")
    >>> round(sum(math.exp(v) for v in dist.values()), 9)
    1.0
    >>> lm.log_prob("the c", "a") > lm.log_prob("the c", "h")
    True
    >>> math.isfinite(lm.log_prob("the c", "Z"))  # outside the vocabulary: the floor
    True
    """

    def __init__(self, order: int, ngrams: Mapping[str, Mapping[str, float]],
                 backoffs: Mapping[str, float] | None = None, unk_log_prob: float = -20.0,
                 cache_size: int = 16384) -> None:
        if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be an int from 1 to {MAX_ORDER}, got {order!r}")
        if "" not in ngrams:
            raise ValueError("ngrams must hold the empty context (the unigrams)")
        too_long = [h for h in ngrams if len(h) >= order]
        if too_long:
            raise ValueError(f"context {too_long[0]!r} is longer than order - 1 = {order - 1}")
        self.order = order
        self._ngrams = {h: dict(table) for h, table in ngrams.items()}
        self._backoffs = dict(backoffs or {})
        self.vocab = "".join(sorted(w for w in self._ngrams[""] if w != EOS))
        self.symbols = (*self.vocab, EOS)
        missing = [w for w in self.symbols if w not in self._ngrams[""]]
        if missing:
            raise ValueError(f"the unigrams lack {missing}")
        self.unk_log_prob = float(unk_log_prob)
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.cache_size = cache_size
        self._context_len = order - 1
        # Context key -> distribution, in two generations. When the current one is full it
        # becomes the old one. A key found in the old one moves to the current one, so keys
        # in use stay cached, as with an LRU cache, while a hit is still one dict lookup.
        self._cache: dict[str, dict[str, float]] = {}
        self._old_cache: dict[str, dict[str, float]] = {}

    @classmethod
    def train(cls, texts: Iterable[str], order: int = 6, smoothing: str = "kneser-ney",
              discount: float | None = None) -> CharNgramLM:
        """Estimates a model from lines of text.

        ``"kneser-ney"`` is interpolated Kneser-Ney (Chen & Goodman 1999), estimated the way
        kenlm's ``lmplz`` does it. The highest order, and n-grams that begin with ``<s>``, use
        raw counts. The other orders use continuation counts: the number of distinct symbols
        seen just before the n-gram. With ``discount=None`` it is the *modified* variant. Each
        order gets three discounts ``D1, D2, D3+`` from its count-of-counts ``n1..n4``:
        ``Y = n1 / (n1 + 2 n2)`` and ``Dk = k - (k + 1) Y n(k+1) / nk``. If some ``nk`` is 0
        or a ``Dk`` falls outside ``(0, k)``, the order uses the single discount ``Y``
        instead. If ``n1`` or ``n2`` is 0, it uses 0.5. Both fallbacks happen only on tiny
        corpora. A given ``discount`` in ``(0, 1]`` is used for every count and order (plain
        absolute-discount Kneser-Ney). Then, with ``a`` the count and ``T(h)`` the sum of
        ``a(h .)``:
        ``P(w|h) = max(a(hw) - D, 0) / T(h) + gamma(h) P(w|h')`` with
        ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / T(h)``, where ``Nk(h.)`` counts the
        symbols seen ``k`` times (3 or more for ``N3+``) after ``h`` and ``h'`` is ``h``
        without its first character.

        ``"witten-bell"`` is interpolated Witten-Bell on raw counts at every order:
        ``P(w|h) = (c(hw) + N1+(h.) P(w|h')) / (c(h) + N1+(h.))``.

        Both recurse down to a uniform distribution over ``vocab`` + ``EOS``. A context never
        seen in training falls through to the longest seen suffix. ``unk_log_prob`` is what
        the unigram level gives one symbol through that uniform share. It equals
        ``log(gamma("") / (len(vocab) + 1))``, the probability of a symbol that was never
        seen, from the empty context.

        Args:
            texts: Lines of text, normalised here with ``normalize_text``.
            order: n-gram order, 1 to 6.
            smoothing: ``"kneser-ney"`` or ``"witten-bell"``.
            discount: Kneser-Ney only: a fixed discount in ``(0, 1]`` instead of the modified
                estimates.

        Raises:
            ValueError: For a bad order, smoothing or discount, for no text at all, or for
                text that holds the reserved characters ``"\\x02"`` / ``"\\x03"``.
        """
        if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be an int from 1 to {MAX_ORDER}, got {order!r}")
        if smoothing not in _SMOOTHINGS:
            raise ValueError(
                f"unknown smoothing {smoothing!r}; available: {', '.join(_SMOOTHINGS)}")
        if discount is not None:
            if smoothing != "kneser-ney":
                raise ValueError("discount applies to kneser-ney smoothing only")
            if not 0.0 < discount <= 1.0:
                raise ValueError(f"discount must lie in (0, 1], got {discount}")
        lines = [normalize_text(t) for t in texts]
        if not lines:
            raise ValueError("no training text")
        if any(_BOS in t or _EOS in t for t in lines):
            raise ValueError("training text holds a reserved character (\\x02 or \\x03)")
        raw = _count_ngrams(lines, order)
        alphas, gammas = _SMOOTHINGS[smoothing](raw, order, discount)
        return cls._from_interpolated(order, alphas, gammas)

    @classmethod
    def _from_interpolated(cls, order: int, alphas: list[dict[str, dict[str, float]]],
                           gammas: list[dict[str, float]]) -> CharNgramLM:
        """Folds ``P(w|h) = alpha(h, w) + gamma(h) P(w|h')`` into backoff tables.

        ``alphas[n][h][w]`` and ``gammas[n][h]`` hold the discounted share and the
        interpolation weight of order ``n`` (context length ``n - 1``).
        """
        uniform = gammas[1][""] / len(alphas[1][""])  # over the characters plus EOS
        probs: dict[str, dict[str, float]] = {
            "": {_sym(w): a + uniform for w, a in alphas[1][""].items()}}
        backoffs: dict[str, float] = {}

        def lower(h: str, w: str) -> float:
            # Backoff lookup in the lower-order tables, which are final by now. It ends at
            # the empty context, which holds every symbol.
            scale = 1.0
            while True:
                table = probs.get(h)
                if table is not None and w in table:
                    return scale * table[w]
                scale *= backoffs.get(h, 1.0)
                h = h[1:]

        for n in range(2, order + 1):
            for h, table in alphas[n].items():
                g = gammas[n][h]
                probs[h] = {_sym(w): a + g * lower(h[1:], _sym(w)) for w, a in table.items()}
                backoffs[h] = g
        return cls(order,
                   {h: {w: math.log(p) for w, p in t.items()} for h, t in probs.items()},
                   {h: math.log(g) for h, g in backoffs.items()},
                   unk_log_prob=math.log(uniform))

    def context_key(self, context: str) -> str:
        """The last ``order - 1`` characters of the context, ``<s>``-padded at line start:
        contexts with one key share one next-symbol distribution, so callers cache by it.

        :meth:`log_prob` and :meth:`log_probs` inline this, to save a call.
        """
        n = self._context_len
        return context[len(context) - n:] if len(context) >= n else _BOS + context

    def _fill(self, key: str) -> dict[str, float]:
        """The distribution after a context key, from the cache or computed and cached."""
        dist = self._cache.get(key)
        if dist is None:
            dist = self._old_cache.get(key)
            if dist is None:
                dist = self._compute(key)
            if len(self._cache) >= self.cache_size:
                self._old_cache, self._cache = self._cache, {}
            self._cache[key] = dist
        return dist

    def _compute(self, key: str) -> dict[str, float]:
        """Natural-log distribution over ``symbols`` after a context key (uncached)."""
        if not key:
            return self._ngrams[""]
        lower = self._fill(key[1:])
        table = self._ngrams.get(key)
        backoff = self._backoffs.get(key)
        if table is None and backoff is None:
            return lower
        if backoff:
            dist = {w: lp + backoff for w, lp in lower.items()}
        else:
            dist = dict(lower)
        if table:
            dist.update(table)
        return dist

    def log_probs(self, context: str) -> dict[str, float]:
        """The whole next-symbol distribution after a context, memoised per context key.

        Args:
            context: Text decoded so far on the line, taken as given (not normalised). Only
                its last ``order - 1`` characters matter.

        Returns:
            Symbol (each ``vocab`` character and ``EOS``) -> natural-log probability. The dict
            is shared with the cache: read it, do not change it.
        """
        n = self._context_len
        key = context[len(context) - n:] if len(context) >= n else _BOS + context
        dist = self._cache.get(key)
        return dist if dist is not None else self._fill(key)

    def log_prob(self, context: str, symbol: str) -> float:
        """Natural-log ``P(symbol | last order - 1 characters of context)``.

        Args:
            context: Text decoded so far on the line, taken as given.
            symbol: One character, or ``EOS``. Anything outside ``vocab`` gets
                ``unk_log_prob``.
        """
        n = self._context_len
        key = context[len(context) - n:] if len(context) >= n else _BOS + context
        dist = self._cache.get(key)
        if dist is None:
            dist = self._fill(key)
        return dist.get(symbol, self.unk_log_prob)

    def score(self, text: str, eos: bool = True) -> float:
        """Natural-log probability of a whole line (``normalize_text`` applied first).

        Args:
            text: The line.
            eos: Whether to add ``log P(EOS | text)``.
        """
        text = normalize_text(text)
        total = sum(self.log_prob(text[:i], c) for i, c in enumerate(text))
        return total + self.log_prob(text, EOS) if eos else total

    def perplexity(self, texts: Iterable[str]) -> float:
        """Per-symbol perplexity over lines, each symbol and each line end counted once."""
        lines = [normalize_text(t) for t in texts]
        events = sum(len(t) + 1 for t in lines)
        return math.exp(-sum(self.score(t) for t in lines) / events)

    def cache_clear(self) -> None:
        """Empties the :meth:`log_probs` cache."""
        self._cache, self._old_cache = {}, {}

    def save(self, path: str | Path) -> None:
        """Writes the model as an ARPA file that kenlm and SRILM can read.

        Each character is a token, the space is ``<space>``. ``<s>`` gets kenlm's and SRILM's
        log10 probability -99 and carries the backoff of the line-start context. ``<unk>`` is
        a unigram with probability ``unk_log_prob``. kenlm applies context backoffs to
        ``<unk>``, so its score for an unknown character can fall below that floor. Values are
        log10 with 9 decimals.

        Args:
            path: Output file (UTF-8).
        """
        sections: list[list[str]] = [[] for _ in range(self.order + 1)]
        backoff = self._backoffs

        def line(log_prob: float, tokens: list[str], ngram: str) -> str:
            fields = [f"{log_prob / _LN10:.9f}", " ".join(tokens)]
            if ngram in backoff:
                fields.append(f"{backoff[ngram] / _LN10:.9f}")
            return "\t".join(fields)

        sections[1].append(line(_ARPA_BOS_LOG10 * _LN10, [BOS], _BOS))
        sections[1].append(f"{self.unk_log_prob / _LN10:.9f}\t{UNK}")
        for h in sorted(self._ngrams, key=lambda h: (len(h), h)):
            context = [_token(c) for c in h]
            for w in sorted(self._ngrams[h]):
                tokens = [*context, EOS if w == EOS else _token(w)]
                sections[len(h) + 1].append(line(self._ngrams[h][w], tokens, h + w))
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(sections[n])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                f.writelines(s + "\n" for s in sections[n])
            f.write("\n\\end\\\n")

    @classmethod
    def load(cls, path: str | Path, cache_size: int = 16384) -> CharNgramLM:
        """Reads an ARPA file with characters as tokens, as :meth:`save` writes it.

        Any backoff ARPA model over single-character tokens loads, for instance one built
        by kenlm's ``lmplz`` from text with one space-separated character per token. How well it
        normalises is up to the file. n-grams that hold ``<unk>`` beyond the unigram are
        skipped. Without an ``<unk>`` unigram, ``unk_log_prob`` is the lowest unigram
        probability.

        Args:
            path: The ARPA file (UTF-8).
            cache_size: As in the constructor.

        Raises:
            ValueError: If the file is not ARPA, its counts disagree with its header, its order
                exceeds 6, or a token is longer than one character (other than ``<s>``,
                ``</s>``, ``<unk>``, ``<space>``).
        """
        declared: dict[int, int] = {}
        found: dict[int, int] = defaultdict(int)
        ngrams: dict[str, dict[str, float]] = defaultdict(dict)
        backoffs: dict[str, float] = {}
        unk_log_prob = None
        section = None  # None before \data\, 0 in the header, n in \n-grams:
        ended = False
        with open(path, encoding="utf-8") as f:
            for raw_line in f:
                text = raw_line.strip()
                if not text or ended:
                    continue
                if text == "\\data\\":
                    section = 0
                elif text == "\\end\\":
                    ended = True
                elif text.startswith("\\") and text.endswith("-grams:"):
                    section = int(text[1:-len("-grams:")])
                elif section == 0 and text.startswith("ngram "):
                    n, count = text[len("ngram "):].split("=")
                    declared[int(n)] = int(count)
                elif section:
                    fields = text.split()
                    n = section
                    if len(fields) not in (n + 1, n + 2):
                        raise ValueError(f"{path}: bad {n}-gram line {text!r}")
                    found[n] += 1
                    tokens = fields[1:n + 1]
                    log_prob = float(fields[0]) * _LN10
                    if UNK in tokens:
                        if n == 1:
                            unk_log_prob = log_prob
                        continue
                    chars = [_char(t, path) for t in tokens]
                    context, symbol = "".join(chars[:-1]), chars[-1]
                    if len(fields) == n + 2 and symbol != EOS:
                        backoffs[context + symbol] = float(fields[-1]) * _LN10
                    if symbol != _BOS:  # <s> is never predicted; only its backoff counts
                        ngrams[context][symbol] = log_prob
        if not declared or not ended:
            raise ValueError(f"{path}: not an ARPA file (no \\data\\ header or no \\end\\)")
        if {n: found.get(n, 0) for n in declared | found} != declared:
            raise ValueError(f"{path}: header counts {declared} but found {dict(found)}")
        if not ngrams.get(""):
            raise ValueError(f"{path}: no unigrams")
        order = max(declared)
        if unk_log_prob is None:
            unk_log_prob = min(ngrams[""].values())
        backoffs = {h: b for h, b in backoffs.items() if b != 0.0 and len(h) < order}
        return cls(order, ngrams, backoffs, unk_log_prob=unk_log_prob, cache_size=cache_size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}, "_old_cache": {}}  # pickled without the cache

    def __repr__(self) -> str:
        sizes = Counter(len(h) + 1 for h in self._ngrams for _ in self._ngrams[h])
        counts = ", ".join(f"{n}-grams={sizes[n]}" for n in sorted(sizes))
        return f"CharNgramLM(order={self.order}, vocab={len(self.vocab)} chars, {counts})"


def _sym(c: str) -> str:
    """Counting alphabet -> public symbol (the EOS sentinel becomes ``EOS``)."""
    return EOS if c == _EOS else c


def _token(c: str) -> str:
    """Context character -> ARPA token."""
    return BOS if c == _BOS else SPACE_TOKEN if c == " " else c


def _char(token: str, path: str | Path) -> str:
    """ARPA token -> context character (``EOS`` stays ``EOS``)."""
    special = {BOS: _BOS, EOS: EOS, SPACE_TOKEN: " "}
    if token in special:
        return special[token]
    if len(token) != 1:
        raise ValueError(f"{path}: token {token!r} is not one character; not a character model")
    return token


def _count_ngrams(lines: list[str], order: int) -> list[Counter]:
    """Raw counts of every n-gram type, n = 1..order, over ``<s>`` line ``</s>``.

    Returns a list indexed by n (entry 0 unused). Keys are strings over the characters and
    the ``_BOS`` / ``_EOS`` sentinels. ``<s>`` alone is never counted: it is not predicted.
    """
    padded = [_BOS + t + _EOS for t in lines]
    raw: list[Counter] = [Counter()]
    for n in range(1, order + 1):
        start = 1 if n == 1 else 0
        raw.append(Counter(s[i:i + n] for s in padded for i in range(start, len(s) - n + 1)))
    return raw


def _by_context(counts: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """n-gram -> count, regrouped as context -> symbol -> count."""
    grouped: dict[str, dict[str, float]] = defaultdict(dict)
    for g, c in counts.items():
        grouped[g[:-1]][g[-1]] = c
    return dict(grouped)


def _modified_discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from count-of-counts, with fallbacks for sparse data."""
    coc = Counter(c for c in counts if c <= 4)
    n1, n2, n3, n4 = (coc[k] for k in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return 0.5, 0.5, 0.5
    y = n1 / (n1 + 2 * n2)
    if n3 and n4:
        ds = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0.0 < d < k for k, d in enumerate(ds, start=1)):
            return ds
    return y, y, y


def _kneser_ney(raw: list[Counter], order: int, discount: float | None
                ) -> tuple[list[dict[str, dict[str, float]]], list[dict[str, float]]]:
    """Discounted shares ``alpha`` and interpolation weights ``gamma`` of interpolated KN."""
    alphas: list[dict[str, dict[str, float]]] = [{}]
    gammas: list[dict[str, float]] = [{}]
    for n in range(1, order + 1):
        if n == order:
            adjusted = dict(raw[n])
        else:
            adjusted = {g: c for g, c in raw[n].items() if g[0] == _BOS}
            continuation: Counter = Counter(g[1:] for g in raw[n + 1])
            adjusted.update(continuation)
        d = (discount,) * 3 if discount is not None else _modified_discounts(adjusted.values())
        alpha_n, gamma_n = {}, {}
        for h, table in _by_context(adjusted).items():
            total = sum(table.values())
            alpha_n[h] = {w: (a - d[min(a, 3) - 1]) / total for w, a in table.items()}
            gamma_n[h] = sum(d[min(a, 3) - 1] for a in table.values()) / total
        alphas.append(alpha_n)
        gammas.append(gamma_n)
    return alphas, gammas


def _witten_bell(raw: list[Counter], order: int, discount: float | None
                 ) -> tuple[list[dict[str, dict[str, float]]], list[dict[str, float]]]:
    """Discounted shares ``alpha`` and interpolation weights ``gamma`` of interpolated WB."""
    alphas: list[dict[str, dict[str, float]]] = [{}]
    gammas: list[dict[str, float]] = [{}]
    for n in range(1, order + 1):
        alpha_n, gamma_n = {}, {}
        for h, table in _by_context(raw[n]).items():
            types, total = len(table), sum(table.values())
            alpha_n[h] = {w: c / (total + types) for w, c in table.items()}
            gamma_n[h] = types / (total + types)
        alphas.append(alpha_n)
        gammas.append(gamma_n)
    return alphas, gammas


_SMOOTHINGS = {"kneser-ney": _kneser_ney, "witten-bell": _witten_bell}

__all__ = ["BOS", "EOS", "MAX_ORDER", "SPACE_TOKEN", "UNK", "CharNgramLM"]
