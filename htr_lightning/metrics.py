"""Character and word error rates, and the loss, accumulated over a whole split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import editdistance
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

from htr_lightning.text.normalize import normalize_text

if TYPE_CHECKING:
    import lightning.pytorch as pl


def units(text: str, unit: str) -> Sequence[str]:
    """The whitespace-normalised characters ("char") or words ("word") that CER and WER count."""
    text = normalize_text(text)
    if unit == "char":
        return text
    return text.split(" ") if text else []


def line_errors(ids: Sequence[str], references: Sequence[str], hypotheses: Sequence) -> list[dict]:
    """One record per evaluated line, for error analysis: ``{"id", "reference", "text",
    "confidence", "char_errors", "chars", "word_errors", "words"}``, counted as
    :class:`ErrorRate` counts them, so a split's ``char_errors`` sum over its ``chars`` is its
    CER.

    >>> from htr_lightning.decoding.greedy import Hypothesis
    >>> line_errors(["a"], ["the cat"], [Hypothesis("the bat", 0.9)])[0]["char_errors"]
    1
    """
    records = []
    for line_id, ref, hyp in zip(ids, references, hypotheses):
        ref_chars, ref_words = units(ref, "char"), units(ref, "word")
        records.append({"id": line_id, "reference": ref, "text": hyp.text,
                        "confidence": hyp.confidence,
                        "char_errors": editdistance.eval(units(hyp.text, "char"), ref_chars),
                        "chars": len(ref_chars),
                        "word_errors": editdistance.eval(units(hyp.text, "word"), ref_words),
                        "words": len(ref_words)})
    return records


class ErrorRate(Metric):
    """Total edit distance / total reference length, over every line seen since ``reset``.

    editdistance (C++) does the alignment; torchmetrics' own CharErrorRate measured about 120×
    slower here. Errors and lengths are summed across processes (``dist_reduce_fx="sum"``), so
    the DDP figure equals the single-process one. Both sides are whitespace-normalised.

    Args:
        unit: "char" for CER, "word" for WER.

    >>> cer = ErrorRate("char")
    >>> cer.update(["abd", "x" * 100], ["abc", "x" * 100])
    >>> round(float(cer.compute()), 4)
    0.0097

    ``update`` also takes :func:`line_errors` records alone, and adds the counts they already
    hold, so an evaluation step aligns each line once for both its record and the metric:

    >>> from htr_lightning.decoding.greedy import Hypothesis
    >>> cer = ErrorRate("char")
    >>> cer.update(line_errors(["a"], ["abc"], [Hypothesis("abd", 0.5)]))
    >>> round(float(cer.compute()), 4)
    0.3333
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, unit: str = "char", **kwargs) -> None:
        super().__init__(**kwargs)
        if unit not in ("char", "word"):
            raise ValueError(f"unit must be 'char' or 'word', not {unit!r}")
        self.unit = unit
        self.add_state("errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str] | Sequence[dict],
               targets: Sequence[str] | None = None) -> None:
        """Adds a batch of predicted and reference lines, or (``targets`` left out) a batch of
        :func:`line_errors` records."""
        if targets is None:
            errors = sum(r[f"{self.unit}_errors"] for r in preds)
            total = sum(r[f"{self.unit}s"] for r in preds)
        else:
            if len(preds) != len(targets):
                raise ValueError(f"{len(preds)} predictions for {len(targets)} references")
            errors = total = 0
            for p, t in zip(preds, targets):
                ref = units(t, self.unit)
                errors += editdistance.eval(units(p, self.unit), ref)
                total += len(ref)
        self.errors += errors
        self.total += total

    def compute(self) -> torch.Tensor:
        """Errors / reference units (0 when nothing was seen)."""
        return self.errors.float() / self.total.clamp(min=1).float()


# The figures of one split, as logged: ``{stage}_cer``, ``{stage}_wer``, ``{stage}_loss``.
SPLIT_METRIC_NAMES = ("cer", "wer", "loss")


def split_metrics(stages: Sequence[str] = ("val", "test")) -> nn.ModuleDict:
    """The figures a system accumulates over an evaluation split, named as they are logged:
    ``{stage}_cer``, ``{stage}_wer`` (:class:`ErrorRate`) and ``{stage}_loss`` (a
    ``MeanMetric``, updated with each batch's mean loss weighted by its lines).

    The loss is a metric too, not a tensor given to ``self.log(..., sync_dist=True)``: Lightning
    2.6 mean-syncs its integer count of lines across processes and so floors it (Lightning
    issue #21859), which inflated ``val_loss`` by 7/6 on a 7-line split over 2 processes. The
    metrics' float sums add up exactly. (``MeanMetric`` drops a NaN loss with a warning.)

    >>> sorted(split_metrics(["val"]))
    ['val_cer', 'val_loss', 'val_wer']
    """
    metrics: dict[str, Metric] = {}
    for stage in stages:
        metrics[f"{stage}_cer"] = ErrorRate("char")
        metrics[f"{stage}_wer"] = ErrorRate("word")
        metrics[f"{stage}_loss"] = MeanMetric()
    return nn.ModuleDict(metrics)


def update_split_metrics(module: pl.LightningModule, stage: str, loss: torch.Tensor | None,
                         records: Sequence[dict]) -> None:
    """Adds one evaluation batch to ``module.metrics`` (made by :func:`split_metrics`).
    Nothing here communicates, so processes may run different numbers of batches;
    :func:`log_split_metrics` reports the totals at the end of the split.

    Args:
        module: The LightningModule evaluating.
        stage: "val" or "test".
        loss: The batch's mean loss, or None when no line of the batch has one.
        records: The batch's :func:`line_errors` records, one per line; their counts are
            added, so the logged CER/WER are exactly the records' sums.
    """
    if loss is not None:
        module.metrics[f"{stage}_loss"].update(loss.detach(), weight=len(records))
    for name in ("cer", "wer"):
        module.metrics[f"{stage}_{name}"].update(records)


def reset_split_metrics(module: pl.LightningModule, stage: str) -> None:
    """Empties the ``stage`` metrics of ``module`` with ordinary tensors, at the start of a split.

    Lightning's ``validate`` and ``test`` run in ``torch.inference_mode`` and reset the logged
    metrics there, which leaves their sums as inference tensors; the validation inside ``fit``
    runs without inference mode and may not add to those in place ("Inplace update to
    inference tensor outside InferenceMode"), so a ``validate`` before a ``fit`` used to crash
    the fit's first validation. Tensors made here are ordinary, and inference mode may update
    ordinary tensors in place, so every order of validate / test / fit works.
    """
    with torch.inference_mode(False):
        for name in SPLIT_METRIC_NAMES:
            module.metrics[f"{stage}_{name}"].reset()


def log_split_metrics(module: pl.LightningModule, stage: str) -> None:
    """Logs ``{stage}_cer``, ``{stage}_wer`` and ``{stage}_loss`` at the end of a split; their
    sums are added across processes there. Logged here, not per batch, so that every process
    logs the same names whatever its lines were (a process that never had a loss would
    otherwise skip ``{stage}_loss`` and leave the others waiting for it in the sync)."""
    for name in SPLIT_METRIC_NAMES:
        module.log(f"{stage}_{name}", module.metrics[f"{stage}_{name}"], prog_bar=name == "cer")
