"""Synthetic handwriting-style text lines, rendered on demand from fonts.

:class:`SyntheticLines` is a reader like the others in this package: a ``Sequence`` of
:class:`~htr_lightning.data.samples.LineSample`. Building a sample is cheap (its text and its
rendering parameters are drawn from a ``random.Random`` seeded by ``(seed, split, index)``);
the pixels are only rendered when :meth:`SyntheticSample.load` is called, so the DataLoader
workers do the rendering. Everything is deterministic: the same ``(seed, split, index)`` gives
the same text and the same pixels in any process, and the train/val/test splits of one seed
are different lines.

Text comes from the English word-frequency list of ``wordfreq`` (mixed with numbers, dates,
capitalised words and punctuation the way English writes it) or from a user's text file.
Fonts are the handwriting families installed through ``fontpkg`` (``fontpkg-caveat``,
``fontpkg-kalam``, ...). Per line the font, size, weight, slant, rotation, stroke width, ink
and paper tone, blur and noise vary.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import tempfile
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from htr_lightning.data.samples import BadSampleError, LineSample

SYNTHETIC_CHARSET: str = "".join(
    sorted(
        " "
        + "abcdefghijklmnopqrstuvwxyz"
        + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        + "0123456789"
        + ".,;:!?'\"-()&/"
    )
)
"""Every character :class:`SyntheticLines` can emit, sorted by code point.

Each default font renders each of them as a real glyph (see :func:`missing_glyphs`).
"""

DEFAULT_FONTS: tuple[str, ...] = (
    "Caveat",
    "Indie Flower",
    "Kalam",
    "Zeyada",
    "Dancing Script",
    "Shadows Into Light",
    "Satisfy",
)
"""Handwriting families used when ``fonts`` is not given (those of them that are installed)."""

_CHARSET_SET = frozenset(SYNTHETIC_CHARSET)
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Typographic characters a user's text file may contain, mapped to the charset's ASCII.
_ASCII_FOLD = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
        "\u2026": "...",
    }
)
# A code point no font maps: it renders as the font's .notdef glyph.
_UNMAPPED = "\U0010fffd"


# --------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class _Face:
    """A loaded font at one size and weight plus its reference line frame (baseline = 0)."""

    font: ImageFont.FreeTypeFont
    top: int  # top of "Hdlkfb" ink: ascender line
    bottom: int  # bottom of "gjpqy" ink: descender line


# (font path, size, variable weight or None) -> face. Per process; never pickled.
_FACES: dict[tuple[str, int, int | None], _Face] = {}


def _face(path: str, size: int, weight: int | None) -> _Face:
    key = (path, size, weight)
    face = _FACES.get(key)
    if face is None:
        font = ImageFont.truetype(path, size)
        if weight is not None:
            _set_weight(font, weight)
        top = font.getbbox("HdlkfbAT", anchor="ls")[1]
        bottom = font.getbbox("gjpqy", anchor="ls")[3]
        face = _FACES[key] = _Face(font, top, bottom)
    return face


def _set_weight(font: ImageFont.FreeTypeFont, weight: int) -> None:
    values = []
    for axis in font.get_variation_axes():
        name = axis["name"]
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        is_weight = name.strip().lower() in ("weight", "wght")
        values.append(float(weight) if is_weight else float(axis["default"]))
    font.set_variation_by_axes(values)


@dataclass(frozen=True)
class _FontChoice:
    """One font file of a family: fixed weight, or a range for a variable font."""

    path: str
    weights: tuple[int, ...] | None  # variable-font weights to draw from; None: static file


def _family_files(name: str) -> tuple[_FontChoice, ...]:
    import fontpkg

    try:
        family = fontpkg.family(name)
    except fontpkg.FamilyNotInstalled as err:
        raise ValueError(
            f"font family {name!r} is not installed; installed: {sorted(installed_fonts())}"
        ) from err
    choices = []
    for file in family.files:
        if file.style != "normal":
            continue
        if file.variable and file.wght_min is not None and file.wght_max is not None:
            weights = tuple(range(file.wght_min, file.wght_max + 1, 50))
            choices.append(_FontChoice(str(file.path), weights))
        else:
            choices.append(_FontChoice(str(file.path), None))
    if not choices:
        raise ValueError(f"font family {name!r} has no upright (normal style) file")
    return tuple(choices)


def installed_fonts() -> list[str]:
    """Names of all font families installed through ``fontpkg``.

    Returns:
        Family names as ``fontpkg`` spells them (e.g. ``"Indie Flower"``).
    """
    import fontpkg

    return [family.name for family in fontpkg.families().values()]


def default_fonts() -> list[str]:
    """The handwriting families of :data:`DEFAULT_FONTS` that are installed.

    Returns:
        Family names, in the order of :data:`DEFAULT_FONTS`.
    """
    installed = {name.lower() for name in installed_fonts()}
    return [name for name in DEFAULT_FONTS if name.lower() in installed]


@lru_cache(maxsize=None)
def _missing_in_file(path: str, chars: str) -> str:
    font = ImageFont.truetype(path, 32)
    notdef = font.getmask(_UNMAPPED)
    notdef_key = (notdef.size, bytes(notdef))
    missing = []
    for char in chars:
        if char.isspace():
            continue
        mask = font.getmask(char)
        if mask.getbbox() is None or (mask.size, bytes(mask)) == notdef_key:
            missing.append(char)
    return "".join(missing)


def missing_glyphs(family: str, chars: str = SYNTHETIC_CHARSET) -> str:
    """Characters that a font family does not render as a real glyph.

    A character is missing from a font when it renders as the font's ``.notdef`` glyph
    (the box drawn for unmapped code points) or as nothing at all. Whitespace is not checked.
    Every upright file of the family (each static weight) is checked.

    Args:
        family: A ``fontpkg`` family name, e.g. ``"Caveat"``.
        chars: The characters to check.

    Returns:
        The missing characters in the order of ``chars`` ("" when the font has them all).

    Raises:
        ValueError: if the family is not installed.

    >>> missing_glyphs("Caveat", "Hello, world!")
    ''
    """
    missing: set[str] = set()
    for choice in _family_files(family):
        missing.update(_missing_in_file(choice.path, chars))
    return "".join(c for c in chars if c in missing)


# --------------------------------------------------------------------------- text


def clean_text(text: str) -> str:
    """Maps text into :data:`SYNTHETIC_CHARSET`.

    Typographic quotes and dashes are folded to ASCII, accents stripped, other characters
    dropped and whitespace collapsed to single spaces.

    Args:
        text: Any text.

    Returns:
        The cleaned text, without leading or trailing space.

    >>> clean_text("  \u201cCaf\u00e9\u201d \u2013 na\u00efve\\tr\u00e9sum\u00e9\u2026 ")
    '"Cafe" - naive resume...'
    """
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD))
    text = "".join(
        " " if c.isspace() else c for c in text if c.isspace() or c in _CHARSET_SET
    )
    return " ".join(text.split())


@lru_cache(maxsize=4)
def _english_words(n: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    import wordfreq

    words = tuple(w for w in wordfreq.top_n_list("en", n) if _WORD_RE.fullmatch(w))
    # Zipf-like weights flattened by an offset and an exponent < 1, so that rarer words (and
    # the rarer letters in them) still come up often enough to be learnt.
    cum = tuple(accumulate((rank + 30.0) ** -0.8 for rank in range(len(words))))
    return words, cum


@lru_cache(maxsize=8)
def _file_words(path: str, mtime_ns: int) -> tuple[str, ...]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return tuple(clean_text(fh.read()).split())


class _EnglishText:
    """English-like lines: frequency-weighted words with numbers and punctuation mixed in."""

    def __init__(self, vocab_size: int) -> None:
        self.words, self.cum = _english_words(vocab_size)
        self.total = self.cum[-1]

    def _word(self, rng: random.Random) -> str:
        word = self.words[bisect_right(self.cum, rng.random() * self.total)]
        if word == "i" or word.startswith("i'"):
            return "I" + word[1:]
        r = rng.random()
        if r < 0.12:
            return word[0].upper() + word[1:]
        if r < 0.14 and len(word) <= 8:
            return word.upper()
        if r < 0.16 and len(word) > 3 and "'" not in word:
            return word + "'s"
        return word

    @staticmethod
    def _number(rng: random.Random) -> str:
        kind = rng.random()
        if kind < 0.25:
            return str(rng.randint(1500, 2030))  # year
        if kind < 0.50:
            return str(rng.choice((rng.randint(0, 20), rng.randint(21, 999))))
        if kind < 0.62:
            return f"{rng.randint(1, 99)},{rng.randint(0, 999):03d}"  # 12,500
        if kind < 0.80:
            return f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"  # amount 3.50
        if kind < 0.93:
            year = rng.choice((rng.randint(1700, 2030), rng.randint(0, 99)))
            return f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/{year:02d}"  # 12/4/1867
        return f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}"  # time 10:30

    def line(self, rng: random.Random, n_words: int) -> str:
        tokens: list[str] = []
        while len(tokens) < n_words:
            r = rng.random()
            if r < 0.08:
                tokens.append(self._number(rng))
            elif r < 0.095 and tokens:
                tokens.append(rng.choice(("&", "-")))
            elif r < 0.13 and len(tokens) < n_words - 1:
                tokens.append(f"{self._word(rng)}-{self._word(rng)}")  # hyphenated pair
            else:
                tokens.append(self._word(rng))
        if rng.random() < 0.5:
            tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
        # Quotes or brackets around a span of one to three tokens.
        if rng.random() < 0.12:
            start = rng.randrange(len(tokens))
            end = min(len(tokens), start + rng.randint(1, 3)) - 1
            left, right = rng.choice((('"', '"'), ('"', '"'), ("'", "'"), ("(", ")")))
            tokens[start] = left + tokens[start]
            tokens[end] = tokens[end] + right
        # Punctuation after words; a capital after a sentence end.
        for k in range(len(tokens)):
            last = k == len(tokens) - 1
            r = rng.random()
            mark = ""
            if last:
                if r < 0.30:
                    mark = "."
                elif r < 0.35:
                    mark = ","
                elif r < 0.38:
                    mark = "?"
                elif r < 0.40:
                    mark = "!"
            elif r < 0.10:
                mark = ","
            elif r < 0.13:
                mark = "."
            elif r < 0.145:
                mark = ";"
            elif r < 0.16:
                mark = ":"
            elif r < 0.17:
                mark = "!"
            elif r < 0.18:
                mark = "?"
            if mark and tokens[k] not in ("&", "-"):
                tokens[k] += mark
                if mark in ".!?" and not last:
                    tokens[k + 1] = tokens[k + 1][:1].upper() + tokens[k + 1][1:]
        return " ".join(" ".join(tokens).split())


class _FileText:
    """Spans of consecutive words from a user's text file."""

    def __init__(self, path: str) -> None:
        path = os.path.abspath(path)
        self.words = _file_words(path, os.stat(path).st_mtime_ns)
        if not self.words:
            raise ValueError(f"{path}: no usable words (after dropping characters outside "
                             f"the synthetic charset)")

    def line(self, rng: random.Random, n_words: int) -> str:
        start = rng.randrange(len(self.words))
        return " ".join(self.words[start:start + n_words])


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderParams:
    """Everything :meth:`SyntheticSample.render` needs besides the text; plain values only.

    Attributes:
        font_path: TrueType file.
        font_size: Nominal size in pixels.
        weight: Weight set on a variable font; None for a static file.
        stroke: Extra stroke width in pixels (0: none).
        shear: Slant; positive leans the tops of letters to the right (x shift per pixel of
            height above the baseline).
        angle: Rotation in degrees, counter-clockwise.
        height_factor: Target image height as a multiple of ``font_size``.
        top_share: Share of the free vertical space put above the text (baseline jitter).
        margin_left: Left margin in pixels.
        margin_right: Right margin in pixels.
        ink: Grey level of the ink (0 black).
        paper: Grey level of the paper (255 white).
        gradient: Paper brightness change from the left to the right edge.
        blur: Gaussian blur radius in pixels (0: none).
        noise: Standard deviation of the Gaussian pixel noise (grey levels).
        noise_seed: Seed of the noise.
    """

    font_path: str
    font_size: int
    weight: int | None
    stroke: float
    shear: float
    angle: float
    height_factor: float
    top_share: float
    margin_left: int
    margin_right: int
    ink: int
    paper: int
    gradient: float
    blur: float
    noise: float
    noise_seed: int


def render_line(text: str, params: RenderParams) -> Image.Image:
    """Renders one line of text as a grayscale image of dark ink on light paper.

    The text is laid out on its baseline, slanted and rotated by one affine transform, cropped
    to its ink horizontally (plus margins) and placed in a frame ``params.height_factor`` times
    the font size high (at least the ascender-to-descender height of the font), then inked,
    blurred and noised.

    Args:
        text: The line; characters outside the font render as its ``.notdef`` glyph.
        params: Font and distortion parameters.

    Returns:
        A mode "L" image.
    """
    face = _face(params.font_path, params.font_size, params.weight)
    size = params.font_size
    # Ink box of the text relative to the pen start on the baseline (y down, baseline 0).
    box = face.font.getbbox(text, anchor="ls", stroke_width=params.stroke)
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = max(math.ceil(box[2]), x0 + 1), max(math.ceil(box[3]), y0 + 1)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).text(
        (-x0, -y0), text, fill=255, font=face.font, anchor="ls",
        stroke_width=params.stroke, stroke_fill=255,
    )
    # Line frame: ascender to descender line, or the ink where it goes beyond them.
    top, bottom = min(y0, face.top), max(y1, face.bottom)
    # Forward map text -> output: shear about the baseline, then rotate; det = 1.
    c, s = math.cos(math.radians(params.angle)), math.sin(math.radians(params.angle))
    k = params.shear
    a00, a01, a10, a11 = c, -c * k + s, -s, s * k + c
    corners = [(x, y) for x in (x0, x1) for y in (top, bottom)]
    xs = [a00 * x + a01 * y for x, y in corners]
    ys = [a10 * x + a11 * y for x, y in corners]
    frame_h = max(ys) - min(ys)
    out_h = max(round(params.height_factor * size), math.ceil(frame_h) + 4)
    tx = -min(xs) + 1
    ty = -min(ys) + (out_h - frame_h) * params.top_share
    out_w = math.ceil(max(xs) - min(xs)) + 2
    # Inverse map output -> mask pixels for PIL (inverse of a det-1 matrix).
    i00, i01, i10, i11 = a11, -a01, -a10, a00
    coeffs = (
        i00, i01, -i00 * tx - i01 * ty - x0,
        i10, i11, -i10 * tx - i11 * ty - y0,
    )
    alpha = mask.transform((out_w, out_h), Image.Transform.AFFINE, coeffs,
                           resample=Image.Resampling.BILINEAR)
    ink_box = alpha.getbbox()
    left, right = (ink_box[0], ink_box[2]) if ink_box else (0, out_w)
    alpha = alpha.crop((left - params.margin_left, 0, right + params.margin_right, out_h))
    if params.blur > 0:
        alpha = alpha.filter(ImageFilter.GaussianBlur(params.blur))

    a = np.asarray(alpha, dtype=np.float32)
    paper = params.paper + np.linspace(0.0, params.gradient, a.shape[1], dtype=np.float32)
    img = paper - a * ((paper - params.ink) / 255.0)
    if params.noise > 0:
        rng = np.random.default_rng(params.noise_seed)
        img += rng.standard_normal(img.shape, dtype=np.float32) * params.noise
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), mode="L")


def _draw_params(rng: random.Random, fonts: Sequence[tuple[_FontChoice, ...]],
                 font_size: tuple[int, int]) -> RenderParams:
    choice = rng.choice(rng.choice(fonts))
    weight = rng.choice(choice.weights) if choice.weights else None
    size = rng.randint(*font_size)
    dark = rng.random() < 0.8
    return RenderParams(
        font_path=choice.path,
        font_size=size,
        weight=weight,
        stroke=rng.choice((0.0, 0.0, rng.uniform(0.2, 1.0))),
        shear=rng.triangular(-0.3, 0.3, 0.05),
        angle=rng.triangular(-1.5, 1.5, 0.0),
        height_factor=rng.uniform(1.4, 1.9),
        top_share=rng.uniform(0.3, 0.7),
        margin_left=rng.randint(2, max(2, size // 4)),
        margin_right=rng.randint(2, max(2, size // 4)),
        # Contrast stays >= 120 grey levels so that small dots (";", "i") survive the blur.
        ink=rng.randint(0, 50) if dark else rng.randint(50, 100),
        paper=rng.randint(215, 255) if dark else rng.randint(220, 250),
        gradient=rng.uniform(-12.0, 12.0) if rng.random() < 0.3 else 0.0,
        blur=rng.choice((0.0, rng.uniform(0.3, 0.8))),
        noise=rng.choice((0.0, rng.uniform(1.0, 8.0))),
        noise_seed=rng.getrandbits(63),
    )


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True, kw_only=True)
class SyntheticSample(LineSample):
    """A synthetic line: ``text`` is known at once, the pixels are rendered by :meth:`load`.

    Attributes:
        params: How to render ``text``.
        cache_file: PNG the rendering is stored in and read back from; None: no cache.
    """

    params: RenderParams
    cache_file: str | None = None

    def render(self) -> Image.Image:
        """Renders the line, ignoring any cache.

        Returns:
            A mode "L" image, dark ink on light paper.
        """
        return render_line(self.text, self.params)

    def load(self) -> Image.Image:
        """The line image, from ``cache_file`` when it is there, else rendered.

        A rendered image is written to ``cache_file`` (atomically) when one is set.

        Returns:
            A mode "L" image, dark ink on light paper; the same pixels either way.

        Raises:
            BadSampleError: if the font cannot be loaded.
        """
        if self.cache_file is not None and os.path.exists(self.cache_file):
            try:
                with Image.open(self.cache_file) as im:
                    im.load()
                    if im.mode == "L":
                        return im
            except (OSError, ValueError):
                pass  # unreadable cache entry: render it again and overwrite it
        try:
            image = self.render()
        except OSError as err:
            raise BadSampleError(f"{self.path}: cannot render ({err})") from err
        if self.cache_file is not None:
            _write_atomically(image, self.cache_file)
        return image


def _write_atomically(image: Image.Image, path: str) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def derive_seed(seed: int, split: str, index: int) -> int:
    """The per-line random seed; stable across processes and Python versions.

    Args:
        seed: Dataset seed.
        split: Split name; different splits give unrelated seeds.
        index: Line index.

    Returns:
        A 64-bit integer.

    >>> derive_seed(0, "train", 1) == derive_seed(0, "train", 1) != derive_seed(0, "val", 1)
    True
    """
    digest = hashlib.blake2b(f"{seed}\x1f{split}\x1f{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SyntheticLines(Sequence):
    """A deterministic, endless-by-seed source of rendered handwriting-style lines.

    ``lines[i]`` is a :class:`SyntheticSample` whose text and rendering parameters depend only
    on ``(seed, split, i)``; its image is rendered when ``load()`` is called.

    Args:
        size: Number of lines.
        split: Split name ("train", "val", "test", ...); each split draws different lines.
        seed: Base seed.
        fonts: Font family names installed through ``fontpkg``; default: the installed
            families of :data:`DEFAULT_FONTS`.
        text_file: UTF-8 text to draw lines from (spans of consecutive words) instead of the
            English word list; characters outside :data:`SYNTHETIC_CHARSET` are dropped.
        min_words: Fewest words (tokens) per line.
        max_words: Most words (tokens) per line.
        font_size: Range of font sizes in pixels, both ends included.
        cache_dir: If given, rendered lines are written to
            ``cache_dir/<seed>_<split>/<i>.png`` on first load and read from there afterwards.
        vocab_size: Number of most frequent English words to draw from.

    Raises:
        ValueError: on an unknown font, a font without glyphs for the charset, a text file
            without usable words, or inconsistent sizes.

    >>> lines = SyntheticLines(100, split="train", seed=0)
    >>> len(lines)
    100
    >>> sample = lines[0]
    >>> sample.text == SyntheticLines(100, split="train", seed=0)[0].text
    True
    >>> image = sample.load()
    >>> image.mode
    'L'
    """

    charset: str = SYNTHETIC_CHARSET
    """Characters any line can contain."""

    def __init__(
        self,
        size: int,
        split: str = "train",
        seed: int = 0,
        fonts: list[str] | None = None,
        text_file: str | None = None,
        min_words: int = 1,
        max_words: int = 6,
        font_size: tuple[int, int] = (28, 44),
        cache_dir: str | None = None,
        vocab_size: int = 20000,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        low, high = int(font_size[0]), int(font_size[1])
        if not 4 <= low <= high:
            raise ValueError(f"need 4 <= font_size[0] <= font_size[1], got {font_size}")
        self.size = int(size)
        self.split = str(split)
        self.seed = int(seed)
        self.text_file = None if text_file is None else os.path.abspath(text_file)
        self.min_words, self.max_words = int(min_words), int(max_words)
        self.font_size = (low, high)
        self.cache_dir = None if cache_dir is None else os.path.abspath(cache_dir)
        self.vocab_size = int(vocab_size)

        self.fonts = list(fonts) if fonts is not None else default_fonts()
        if not self.fonts:
            raise ValueError(
                "no handwriting font installed: install e.g. fontpkg-caveat, or pass fonts="
                f"(installed: {sorted(installed_fonts())})"
            )
        self._font_files = tuple(_family_files(name) for name in self.fonts)
        for name in self.fonts:
            missing = missing_glyphs(name)
            if missing:
                raise ValueError(f"font {name!r} has no glyph for {missing!r}")
        self._source: _EnglishText | _FileText | None = None
        self._text_source()  # fail early on a missing or empty text file

    def _text_source(self) -> _EnglishText | _FileText:
        if self._source is None:
            self._source = (_FileText(self.text_file) if self.text_file is not None
                            else _EnglishText(self.vocab_size))
        return self._source

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_source"] = None  # the word list is rebuilt (from a cache) where it is used
        return state

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        """The line at ``index`` (negative counts from the end), or a list for a slice."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} lines")
        rng = random.Random(derive_seed(self.seed, self.split, index))
        n_words = rng.randint(self.min_words, self.max_words)
        text = self._text_source().line(rng, n_words)
        params = _draw_params(rng, self._font_files, self.font_size)
        name = f"{self.seed}_{self.split}/{index}"
        cache_file = None
        if self.cache_dir is not None:
            cache_file = os.path.join(self.cache_dir, f"{self.seed}_{self.split}", f"{index}.png")
        return SyntheticSample(
            id=name,
            text=text,
            path=cache_file or f"synthetic:{name}",
            params=params,
            cache_file=cache_file,
        )

    def __repr__(self) -> str:
        source = f"text_file={self.text_file!r}" if self.text_file else "english"
        return (f"SyntheticLines(size={self.size}, split={self.split!r}, seed={self.seed}, "
                f"{source}, fonts={self.fonts})")


def compose_page(lines: Sequence[Image.Image], gaps: Sequence[int] | int = 20, angle: float = 0.0,
                 margin: int = 40, paper: int = 255) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Stacks line images into a paragraph image, for testing and demonstrating segmentation.

    Args:
        lines: Line images (converted to grayscale), top to bottom, left-aligned.
        gaps: Blank rows between consecutive lines (one value, or one per gap).
        angle: Rotation of the whole page in degrees, counter-clockwise (skew).
        margin: Blank border in pixels.
        paper: Grey level of the page.

    Returns:
        The page ("L") and each line's (top, bottom) rows before rotation.
    """
    grays = [line.convert("L") for line in lines]
    gap_list = [gaps] * max(0, len(grays) - 1) if isinstance(gaps, int) else list(gaps)
    if len(gap_list) != max(0, len(grays) - 1):
        raise ValueError(f"need {len(grays) - 1} gaps for {len(grays)} lines, got {len(gap_list)}")
    width = max((g.width for g in grays), default=1) + 2 * margin
    height = sum(g.height for g in grays) + sum(gap_list) + 2 * margin
    page = Image.new("L", (width, height), paper)
    rows, y = [], margin
    for i, gray in enumerate(grays):
        page.paste(gray, (margin, y))
        rows.append((y, y + gray.height))
        y += gray.height + (gap_list[i] if i < len(gap_list) else 0)
    if angle:
        page = page.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=paper)
    return page, rows
