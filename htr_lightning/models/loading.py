"""Load any htr_lightning checkpoint without knowing its class."""

from __future__ import annotations

from pathlib import Path

import torch

from htr_lightning.models.ctc_system import CTCSystem


def resolve_system_class(class_path: str) -> type[CTCSystem]:
    """The CTC system class named by a dotted path, e.g. ``htr_lightning.models.TeacherSystem``.

    Only classes of :mod:`htr_lightning.models` are accepted, so a checkpoint or an exported
    bundle cannot make us import arbitrary code.

    Raises:
        ValueError: The path names anything else.
    """
    import htr_lightning.models as models

    module, _, name = class_path.rpartition(".")
    cls = getattr(models, name, None)
    if not module.startswith("htr_lightning.models") or not (isinstance(cls, type) and issubclass(cls, CTCSystem)):
        raise ValueError(f"class {class_path!r} is not an htr_lightning CTC system")
    return cls


def system_class(path: str | Path) -> type[CTCSystem]:
    """The system class a checkpoint was trained with.

    Read from the ``_class_path`` that ``htr-lightning`` stores with the hyperparameters (see
    :func:`resolve_system_class`). Checkpoints saved outside the CLI have no class path:
    TeacherSystem.
    """
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    class_path = hparams.get("_class_path", "htr_lightning.models.TeacherSystem")
    try:
        return resolve_system_class(class_path)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_system(path: str | Path, map_location: str | torch.device = "cpu") -> CTCSystem:
    """``load_from_checkpoint`` on the checkpoint's own class, in eval mode."""
    return system_class(path).load_from_checkpoint(path, map_location=map_location).eval()
