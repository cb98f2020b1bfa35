import math
import pytest
import torch

from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.metrics import ErrorRate, line_errors


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


def test_records_give_the_same_rates_as_the_texts():
    """Evaluation steps feed the metrics their line_errors records (one alignment per line);
    the rates must be those of the texts themselves."""
    refs = ["the cat  sat", "Front capt.", "", "a b c d"]
    preds = ["the bat sat on", "Frontcaptt", "x y", "a b c d"]
    records = line_errors([str(i) for i in range(4)], refs, [Hypothesis(p, 1.0) for p in preds])
    for unit in ("char", "word"):
        from_texts, from_records = ErrorRate(unit), ErrorRate(unit)
        from_texts.update(preds, refs)
        from_records.update(records[:2])
        from_records.update(records[2:])
        assert int(from_records.errors) == int(from_texts.errors) > 0
        assert int(from_records.total) == int(from_texts.total) > 0
        assert float(from_records.compute()) == float(from_texts.compute())


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


def test_every_evaluation_logs_the_same_names_even_without_a_loss(tmp_path):
    """A split (or, under DDP, one process's share of it) where no line has a CTC loss still
    logs val_loss: processes that logged different names would wait for each other forever."""
    import lightning.pytorch as pl
    from tiny_systems import TINY_TEACHER

    from htr_lightning.data import HTRDataModule
    from htr_lightning.models import TeacherSystem

    data = HTRDataModule(dataset="synthetic", height=32, batch_size=4, augment=False,
                         synthetic_size={"train": 1, "val": 4, "test": 4},
                         reader_options={"max_words": 2})
    model = TeacherSystem(data.charset, **TINY_TEACHER)
    model.ctc_loss = lambda *args: None  # as if no line fitted its frames
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="MeanMetric was called before the ``update``"):
        (result,) = trainer.validate(model, datamodule=data)
    assert set(result) == {"val_cer", "val_wer", "val_loss"}
    assert 0 < result["val_cer"] and math.isnan(result["val_loss"])
