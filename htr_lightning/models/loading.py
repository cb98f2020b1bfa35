"""Load any htr_lightning checkpoint without knowing its class."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from htr_lightning.checkpoints import load_hyperparameters
from htr_lightning.models.ctc_system import CTCSystem


def resolve_system_class(class_path: str, base: type[pl.LightningModule] = CTCSystem
                         ) -> type[pl.LightningModule]:
    """The system class named by a dotted path, e.g. ``htr_lightning.models.TeacherSystem``.

    Only classes of :mod:`htr_lightning.models` are accepted, so a checkpoint or an exported
    bundle cannot make us import arbitrary code.

    Args:
        class_path: Dotted path.
        base: The class must be this one or a subclass: :class:`CTCSystem` (the default) for
            exported CTC bundles, ``LightningModule`` for any system's training checkpoint.

    Raises:
        ValueError: The path names anything else.
    """
    import htr_lightning.models as models

    module, _, name = class_path.rpartition(".")
    cls = getattr(models, name, None)
    if not module.startswith("htr_lightning.models") or not (isinstance(cls, type) and issubclass(cls, base)):
        kind = "CTC system" if base is CTCSystem else "system"
        raise ValueError(f"class {class_path!r} is not an htr_lightning {kind}")
    return cls


def system_class(path: str | Path, weights_only: bool | None = None) -> type[pl.LightningModule]:
    """The system class a checkpoint was trained with.

    Read from the ``_class_path`` that ``htr-lightning`` stores with the hyperparameters (see
    :func:`resolve_system_class`). CTC checkpoints saved outside the CLI have no class path:
    TeacherSystem (TrOCRSystem stores its own).

    Raises:
        UnsafeCheckpointError: when the file needs pickle and ``weights_only`` is not False.
    """
    hparams = load_hyperparameters(path, weights_only)
    class_path = hparams.get("_class_path", "htr_lightning.models.TeacherSystem")
    try:
        return resolve_system_class(class_path, base=pl.LightningModule)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_system(path: str | Path, map_location: str | torch.device = "cpu",
                weights_only: bool | None = None) -> pl.LightningModule:
    """``load_from_checkpoint`` on the checkpoint's own class, in eval mode.

    Args:
        path: Checkpoint file.
        map_location: Device for the weights.
        weights_only: None/True reads tensors and plain values only (refusing a file that needs
            pickle, see :mod:`htr_lightning.checkpoints`); False unpickles a file you trust.
    """
    cls = system_class(path, weights_only)
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=weights_only).eval()
