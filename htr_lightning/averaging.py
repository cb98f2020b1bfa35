"""Weight averaging: Lightning's EMA callback with a delayed start that works.

``lightning.pytorch.callbacks.EMAWeightAveraging`` creates its average as a copy of the initial
weights and, until its first update, still treats that copy as the average: it validates it,
saves it as every checkpoint's weights and copies it into the model when training ends
(Lightning 2.6, issue #21724, open). With ``update_starting_at_step`` set, every validation
before the start then scores the untrained network, and ``best.ckpt`` may hold it.

Starting the average late matters for a CTC network trained from scratch: with decay 0.999 an
average begun at step 0 still gives its first weights a share of 0.999**n (46 % after 782
steps), BatchNorm statistics included, and the 384-unit Hooker teacher validated at 100 % CER
for its first four epochs; at step 1,108 its average read 100 % val CER and its raw weights
35.5 % (README, weight averaging).

:class:`EMA` is that callback with one change: until the average has taken its first update,
the raw weights are validated, saved and kept. Afterwards it behaves exactly as Lightning's.
Use it as ``--trainer.callbacks+=htr_lightning.averaging.EMA`` with the same arguments.

Outside ``fit`` (validate, test, predict with the training config) it does nothing: a
checkpoint's ``state_dict`` already holds the weights its ``val_cer`` was measured on, the
average once it had started. Lightning's class warns there that its state "cannot be
restored" and asks for the callback to be removed from the config.
"""
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging

__all__ = ["EMA"]


class EMA(EMAWeightAveraging):
    """:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` whose average stands in for
    the weights (validation, checkpoints, the end of training) only once it has been updated.
    Arguments as Lightning's: ``decay``, ``update_starting_at_step``, ``update_every_n_steps``,
    ``update_starting_at_epoch``, ``use_buffers``, ``device``."""

    def has_started(self) -> bool:
        """True once the average holds at least one update of the weights."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Guarded on both sides: n_averaged cannot change during a validation, so a swap in
        # is always undone by the swap out.
        if self.has_started():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.has_started():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.has_started():
            super().on_train_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        # The average is made in setup() for fit only. Elsewhere the model has just been
        # loaded from the file's state_dict, which is the evaluated weights: nothing to restore.
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and not self.has_started():
            # The file's weights are what was validated: the raw ones. The (empty) average still
            # rides along under averaging_state, so a resume starts it afresh at its first update.
            checkpoint["state_dict"] = checkpoint["current_model_state"]
