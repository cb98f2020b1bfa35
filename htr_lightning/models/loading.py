"""Load any htr_lightning checkpoint without knowing its class."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch


def system_class(path: str | Path) -> type[pl.LightningModule]:
    """The system class a checkpoint was trained with.

    Read from the ``_class_path`` that ``htr-lightning`` stores with the hyperparameters; only
    classes of :mod:`htr_lightning.models` are accepted (a checkpoint cannot make us import
    arbitrary code). CTC checkpoints saved outside the CLI have no class path: TeacherSystem
    (TrOCRSystem stores its own).
    """
    import htr_lightning.models as models

    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    class_path = hparams.get("_class_path", "htr_lightning.models.TeacherSystem")
    module, _, name = class_path.rpartition(".")
    cls = getattr(models, name, None)
    if not module.startswith("htr_lightning.models") or not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ValueError(f"{path}: class {class_path!r} is not an htr_lightning system")
    return cls


def load_system(path: str | Path, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """``load_from_checkpoint`` on the checkpoint's own class, in eval mode."""
    return system_class(path).load_from_checkpoint(path, map_location=map_location).eval()
