import pytest
import torch

from htr_lightning.metrics import ErrorRate


def test_cer_is_accumulated_over_the_split_not_averaged_over_batches():
    # STYLE.md rule 5: a 2-char error line plus a perfect 100-char line.
    cer = ErrorRate("char")
    cer.update(["xy"], ["ab"])
    cer.update(["a" * 100], ["a" * 100])
    assert float(cer.compute()) == pytest.approx(2 / 102)


def test_wer_counts_word_edits_and_normalises_spaces():
    wer = ErrorRate("word")
    wer.update(["the  cat sat", ""], ["the cat  sat on", "mat"])
    assert float(wer.compute()) == pytest.approx(2 / 5)


def test_reset_and_empty():
    cer = ErrorRate("char")
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(cer.compute()) == 0.0
    cer.update(["a"], ["b"])
    cer.reset()
    cer.update(["abc"], ["abc"])
    assert float(cer.compute()) == 0.0


def test_states_sum_across_processes():
    cer = ErrorRate("char")
    assert cer._reductions["errors"] is torch.sum or "sum" in str(cer._reductions["errors"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unit"):
        ErrorRate("line")
    with pytest.raises(ValueError, match="2 predictions for 1"):
        ErrorRate().update(["a", "b"], ["a"])
