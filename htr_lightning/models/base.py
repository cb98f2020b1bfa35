"""HTRSystem: what every htr_lightning LightningModule shares, CTC or TrOCR.

- Safe loading: ``load_from_checkpoint`` reads without pickle unless the caller passes
  ``weights_only=False`` (see :mod:`htr_lightning.checkpoints`).
- Non-finite steps: an optimizer step whose gradients hold NaN or inf (a NaN/inf loss, or an
  overflow in backward) is skipped, with a warning and a counter, instead of writing NaN into
  the weights and the optimizer's moments.
- :meth:`evaluating`, the eval-mode switch ``transcribe`` uses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from htr_lightning.checkpoints import refusing_pickle
from htr_lightning.metrics import log_split_metrics, reset_split_metrics

log = logging.getLogger("htr_lightning.models")

# How a model's lines were cut, for messages (see HTRSystem.rectified_lines).
LINE_CUTS = {True: "straightened along their baselines", False: "not straightened"}


def report_other_line_cut(model_rectified: bool, data_rectified: bool, use: str = "evaluated on",
                          fix: str = "set data.reader_options rectify") -> None:
    """Warns when a model meets lines cut another way than it trained on (straightened or not):
    its CER there is not the one it can reach. ``use`` says what the lines are for, ``fix``
    which setting to change."""
    if data_rectified != model_rectified:
        log.warning("this model trained on lines %s, and the lines it is %s are %s; "
                    "%s as its training data had it",
                    LINE_CUTS[model_rectified], use, LINE_CUTS[data_rectified], fix)


class HTRSystem(pl.LightningModule):
    """Base class of the systems in :mod:`htr_lightning.models`.

    Attributes:
        skipped_steps: Optimizer steps skipped for non-finite gradients in this run (also
            logged as ``train_skipped_steps`` and kept in checkpoints).
        rectified_lines: Whether the model trained on PAGE-XML lines straightened along their
            baselines (the data module's ``reader_options: {rectify: true}``, or a folder
            packed with it: :attr:`HTRDataModule.rectified_lines
            <htr_lightning.data.HTRDataModule.rectified_lines>`). Checkpoints keep
            it, and ``transcribe``, ``predict`` and exports cut PAGE-XML inputs the same way
            by default. Set it yourself for a model trained on lines cut elsewhere.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped_steps = 0
        self.rectified_lines = False

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None,
                             strict=None, weights_only: bool | None = None, **kwargs):
        """Lightning's ``load_from_checkpoint``, reading the file without pickle unless
        ``weights_only=False`` (our checkpoints hold only tensors and plain values).

        Raises:
            UnsafeCheckpointError: naming the file, when it needs pickle and ``weights_only`` is
                not False.
        """
        with refusing_pickle(checkpoint_path, weights_only) as safe:
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location,
                                                hparams_file=hparams_file, strict=strict,
                                                weights_only=safe, **kwargs)

    # ------------------------------------------------------------------ non-finite steps
    def _scaler_guards_steps(self) -> bool:
        """float16 mixed precision: its GradScaler already skips steps with inf/NaN gradients
        (and lowers the scale; an overflow there is routine, not a fault)."""
        trainer = self._trainer
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return isinstance(plugin, MixedPrecision) and plugin.scaler is not None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skips the coming optimizer step when any gradient is NaN or inf.

        The gradients are dropped (set to None), so the optimizer leaves every parameter and
        its moments untouched; the learning-rate schedule goes on. Under DDP the gradients are
        already averaged across processes, so all of them decide alike.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads or self._scaler_guards_steps():
            return
        # One fused pass; the norm is NaN or inf iff an entry is (or the gradients overflow).
        if bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            return
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        log.warning("step %d: NaN or inf in the loss or gradients; optimizer step skipped "
                    "(%d so far in this run)", self.global_step, self.skipped_steps)
        self.log("train_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keeps the skipped-step counter with the run, and how its lines were cut."""
        checkpoint["htr_skipped_steps"] = self.skipped_steps
        rectified = self.data_rectified_lines()
        if rectified is not None:  # the lines this run is training on
            self.rectified_lines = rectified
        checkpoint["htr_rectified_lines"] = self.rectified_lines

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restores the skipped-step counter and how the lines were cut."""
        self.skipped_steps = int(checkpoint.get("htr_skipped_steps", 0))
        self.rectified_lines = bool(checkpoint.get("htr_rectified_lines", False))

    def data_rectified_lines(self) -> bool | None:
        """Whether the trainer's data module straightens its lines; None without one that says."""
        data = getattr(self._trainer, "datamodule", None) if self._trainer else None
        rectified = getattr(data, "rectified_lines", None)
        return rectified if isinstance(rectified, bool) else None

    # ----------------------------------------------------------------------- evaluation
    def _report_other_line_cut(self) -> None:
        """Warns when a checkpoint is evaluated on lines cut another way than it trained on
        (straightened or not): its CER there is not the one it can reach."""
        rectified = self.data_rectified_lines()
        if rectified is not None:
            report_other_line_cut(self.rectified_lines, rectified)

    def on_validation_start(self) -> None:
        """``validate`` on lines cut another way than training's is reported (not in ``fit``,
        where the model takes the cut of its data)."""
        if self._trainer is not None and self.trainer.state.fn == "validate":
            self._report_other_line_cut()

    def on_test_start(self) -> None:
        """``test`` on lines cut another way than training's is reported."""
        self._report_other_line_cut()

    # Systems keep their figures in ``self.metrics`` (:func:`~htr_lightning.metrics.split_metrics`)
    # and update them in their steps; the totals are logged once per split, here.
    def on_validation_epoch_start(self) -> None:
        """Starts the split's sums afresh (see :func:`~htr_lightning.metrics.reset_split_metrics`)."""
        reset_split_metrics(self, "val")

    def on_test_epoch_start(self) -> None:
        """Starts the split's sums afresh."""
        reset_split_metrics(self, "test")

    def on_validation_epoch_end(self) -> None:
        """Logs ``val_cer``, ``val_wer`` and ``val_loss`` over the whole split."""
        log_split_metrics(self, "val")

    def on_test_epoch_end(self) -> None:
        """Logs ``test_cer``, ``test_wer`` and ``test_loss`` over the whole split."""
        log_split_metrics(self, "test")

    # ------------------------------------------------------------------------- inference
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)
