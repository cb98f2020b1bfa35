"""Behaviour of the synthetic line generator: determinism, charset, images, cache, pickling."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from htr_lightning.data.samples import LineSample
from htr_lightning.data.synthetic import (
    SYNTHETIC_CHARSET,
    SyntheticLines,
    SyntheticSample,
    clean_text,
    default_fonts,
    missing_glyphs,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_samples_are_line_samples_with_cheap_text():
    lines = SyntheticLines(10, split="train", seed=3)
    assert len(lines) == 10
    sample = lines[4]
    assert isinstance(sample, SyntheticSample) and isinstance(sample, LineSample)
    assert sample.text and sample.image_bytes is None
    assert lines[-1].text == lines[9].text
    assert [s.text for s in lines[2:5]] == [lines[i].text for i in range(2, 5)]
    assert len(list(lines)) == 10
    with pytest.raises(IndexError):
        lines[10]


def test_same_seed_split_index_gives_same_text_and_pixels_in_a_fresh_object():
    first = SyntheticLines(50, split="val", seed=7)
    second = SyntheticLines(50, split="val", seed=7)
    assert [s.text for s in first] == [s.text for s in second]
    for i in (0, 13, 49):
        assert first[i].id == second[i].id
        assert np.array_equal(pixels(first[i].load()), pixels(second[i].load()))


def test_lines_do_not_depend_on_the_process_hash_seed():
    code = (
        "import hashlib, sys\n"
        "from htr_lightning.data.synthetic import SyntheticLines\n"
        "lines = SyntheticLines(20, split='train', seed=21)\n"
        "sys.stdout.write('|'.join(s.text for s in lines) + '\\n')\n"
        "sys.stdout.write(hashlib.sha1(lines[3].load().tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    lines = SyntheticLines(20, split="train", seed=21)
    assert out[0] == "|".join(s.text for s in lines)
    assert out[1] == hashlib.sha1(lines[3].load().tobytes()).hexdigest()


@pytest.mark.parametrize(
    "other", [dict(seed=1, split="train"), dict(seed=0, split="val"), dict(seed=0, split="test")]
)
def test_other_seed_or_split_gives_other_lines(other):
    base = [s.text for s in SyntheticLines(50, split="train", seed=0)]
    texts = [s.text for s in SyntheticLines(50, **other)]
    same_position = sum(a == b for a, b in zip(base, texts))
    assert same_position <= 3  # one-word lines may coincide now and then
    assert len(set(base) & set(texts)) <= 5


def test_texts_use_only_the_charset_and_are_normalised():
    texts = [s.text for s in SyntheticLines(500, seed=11, max_words=8)]
    allowed = set(SYNTHETIC_CHARSET)
    for text in texts:
        assert set(text) <= allowed, text
        assert text == text.strip() and "  " not in text and text
    joined = "".join(texts)
    # The mix promised by the generator shows up over 500 lines.
    assert any(c.isdigit() for c in joined)
    assert any(c.isupper() for c in joined)
    for mark in ",.()\"'-":
        assert mark in joined, mark


def test_word_counts_follow_min_and_max_words():
    lines = SyntheticLines(100, seed=2, min_words=2, max_words=3)
    counts = [len(s.text.split()) for s in lines]
    assert min(counts) >= 2 and max(counts) <= 3


def test_images_are_grayscale_dark_ink_on_light_paper_of_the_expected_height():
    lines = SyntheticLines(40, seed=5, font_size=(28, 44))
    for sample in lines:
        image = sample.load()
        assert image.mode == "L"
        a = pixels(image).astype(np.float64)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        darkest = np.sort(a, axis=None)[: max(1, a.size // 20)]
        assert border.mean() > darkest.mean() + 60, sample.text
        size = sample.params.font_size
        assert 1.3 * size <= image.height <= 2.5 * size, (sample.text, size, image.size)
        assert image.width >= image.height // 2


def test_width_grows_with_text_length():
    lines = SyntheticLines(60, seed=9, min_words=1, max_words=8)
    lengths = [len(s.text) for s in lines]
    widths = [s.load().width for s in lines]
    assert np.corrcoef(lengths, widths)[0, 1] > 0.7


def test_text_file_mode_uses_only_words_from_the_file(tmp_path):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text(
        "The \u201cquick\u201d brown fox \u2013 jumped over the lazy dog.\n"
        "Na\u00efve caf\u00e9 owners \u4e2d\u6587 paid 3.50 on 12/4/1867!\n",
        encoding="utf-8",
    )
    vocabulary = set(clean_text(text_file.read_text(encoding="utf-8")).split())
    assert {'"quick"', "Naive", "cafe", "3.50", "12/4/1867!"} <= vocabulary
    lines = SyntheticLines(60, seed=4, text_file=str(text_file), min_words=1, max_words=4)
    for sample in lines:
        assert sample.text and set(sample.text) <= set(SYNTHETIC_CHARSET)
        assert set(sample.text.split()) <= vocabulary, sample.text
    assert lines[0].load().mode == "L"


def test_text_file_without_usable_words_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\u4e2d\u6587 \u65e5\u672c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no usable words"):
        SyntheticLines(5, text_file=str(empty))


def test_cache_round_trip_gives_identical_pixels(tmp_path):
    cache = tmp_path / "cache"
    rendered = [s.render() for s in SyntheticLines(4, split="val", seed=6)]
    first = SyntheticLines(4, split="val", seed=6, cache_dir=str(cache))
    loaded_first = [s.load() for s in first]
    files = sorted(os.listdir(cache / "6_val"))
    assert files == ["0.png", "1.png", "2.png", "3.png"]  # no temporary files left behind
    assert first[2].path == str(cache / "6_val" / "2.png")
    loaded_again = [s.load() for s in SyntheticLines(4, split="val", seed=6, cache_dir=str(cache))]
    for a, b, c in zip(rendered, loaded_first, loaded_again):
        assert np.array_equal(pixels(a), pixels(b))
        assert np.array_equal(pixels(a), pixels(c))


def test_cached_file_is_what_load_returns(tmp_path):
    lines = SyntheticLines(1, seed=0, cache_dir=str(tmp_path))
    lines[0].load()
    marker = Image.new("L", (17, 9), 123)
    marker.save(tmp_path / "0_train" / "0.png")
    assert np.array_equal(pixels(lines[0].load()), pixels(marker))


def test_pickled_sample_and_dataset_give_the_same_lines():
    lines = SyntheticLines(8, split="test", seed=12)
    sample = lines[5]
    copy = pickle.loads(pickle.dumps(sample))
    assert copy == sample
    assert np.array_equal(pixels(copy.load()), pixels(sample.load()))
    lines_copy = pickle.loads(pickle.dumps(lines))
    assert [s.text for s in lines_copy] == [s.text for s in lines]


def test_fonts_can_be_chosen_and_unknown_fonts_are_refused():
    fonts = default_fonts()
    lines = SyntheticLines(20, seed=1, fonts=fonts[:1])
    assert len({s.params.font_path for s in lines}) == 1
    with pytest.raises(ValueError, match="not installed"):
        SyntheticLines(5, fonts=["No Such Handwriting Font"])


def test_default_fonts_render_every_charset_character_as_a_real_glyph():
    fonts = default_fonts()
    assert fonts, "no handwriting font package installed"
    for name in fonts:
        assert missing_glyphs(name) == "", name


def test_missing_glyph_check_detects_unsupported_characters():
    name = default_fonts()[0]
    assert missing_glyphs(name, "a\u4e00b\u0e01") == "\u4e00\u0e01"
