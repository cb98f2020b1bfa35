"""A NaN/inf loss or gradient skips its optimizer step (warning + counter) instead of reaching
the weights; CTC-infeasible lines are left out before the loss (see test_teacher)."""

import inspect
import logging
import math

import lightning.pytorch as pl
import torch

import htr_lightning.models as models
from htr_lightning.data import HTRDataModule
from htr_lightning.models import HTRSystem, TeacherSystem


class PoisonedTeacher(TeacherSystem):
    """A teacher whose loss turns NaN (or inf) on chosen training batches."""

    poison: dict[int, float] = {}

    def training_losses(self, batch, log_probs, lengths):
        losses = super().training_losses(batch, log_probs, lengths)
        bad = self.poison.get(self.global_step)
        if bad is not None:
            losses["loss"] = losses["loss"] * bad
        return losses


class WeightLog(pl.Callback):
    """Parameters before and after every training step."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def _copy(module):
        return [p.detach().clone() for p in module.parameters()]

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before.append(self._copy(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self._copy(module))


def test_nan_and_inf_steps_are_skipped_and_counted(tmp_path, tiny_teacher_kwargs, tiny_data_kwargs,
                                                   caplog):
    pl.seed_everything(0)
    dm = HTRDataModule(**tiny_data_kwargs)
    model = PoisonedTeacher(dm.charset, **tiny_teacher_kwargs)
    model.poison = {1: math.nan, 3: math.inf}
    weights = WeightLog()
    trainer = pl.Trainer(max_steps=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[weights],
                         default_root_dir=tmp_path, accelerator="cpu", devices=1)
    with caplog.at_level(logging.WARNING, logger="htr_lightning.models"):
        trainer.fit(model, dm)

    assert model.skipped_steps == 2
    changed = [any(not torch.equal(a, b) for a, b in zip(before, after))
               for before, after in zip(weights.before, weights.after)]
    assert changed == [True, False, True, False, True]
    for param in model.parameters():
        assert torch.isfinite(param).all()
    for state in trainer.optimizers[0].state.values():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    skipped = [r.message for r in caplog.records if "optimizer step skipped" in r.message]
    assert len(skipped) == 2 and skipped[0].startswith("step 1: NaN or inf")
    assert "(2 so far in this run)" in skipped[1]
    # The counter travels with the run.
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["htr_skipped_steps"] == 2
    assert TeacherSystem.load_from_checkpoint(ckpt).skipped_steps == 2


def test_every_system_has_the_guard():
    systems = [getattr(models, name) for name in models.__all__
               if inspect.isclass(getattr(models, name))]
    assert {s.__name__ for s in systems} >= {"TeacherSystem", "StudentSystem", "TrOCRSystem",
                                             "BestPracticesSystem", "LLMAugmentedSystem"}
    for system in systems:
        assert issubclass(system, HTRSystem), system
        assert system.on_before_optimizer_step is HTRSystem.on_before_optimizer_step, system
