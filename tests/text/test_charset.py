import logging

import pytest
import torch

from htr_lightning.text import CTCTokenizer, normalize_text


def test_blank_is_zero_and_labels_follow_charset_order():
    tok = CTCTokenizer("ba ")
    assert tok.encode("ab a") == [2, 1, 3, 2]
    assert len(tok) == 4
    assert tok.decode([0, 2, 0, 1]) == "ab"


def test_from_texts_sorted_and_normalised():
    tok = CTCTokenizer.from_texts(["cab", "  b\ta  "])
    assert tok.charset == " abc"


def test_unknown_symbols_dropped_counted_and_reported_once(caplog):
    tok = CTCTokenizer("ab")
    with caplog.at_level(logging.WARNING, logger="htr_lightning.text"):
        assert tok.encode("axbx") == [1, 2]
        assert tok.encode("x") == []
    assert tok.unknown["x"] == 3
    assert sum("'x'" in r.message for r in caplog.records) == 1


def test_encode_batch_layout_matches_ctc_loss():
    flat, lengths = CTCTokenizer("abc").encode_batch(["ab", "", "cca"])
    assert flat.tolist() == [1, 2, 3, 3, 1]
    assert lengths.tolist() == [2, 0, 3]
    assert flat.dtype == lengths.dtype == torch.long


@pytest.mark.parametrize("bad, message", [("", "empty"), ("aba", "duplicate")])
def test_bad_charsets_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        CTCTokenizer(bad)


def test_missing_counts_without_side_effects():
    tok = CTCTokenizer("ab")
    assert tok.missing(["abc", "c d"]) == {"c": 2, "d": 1, " ": 1}
    assert not tok.unknown


def test_normalize_text_nfc_and_spaces():
    assert normalize_text("e\u0301  x\n") == "\u00e9 x"
