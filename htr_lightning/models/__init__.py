"""LightningModules ("systems"): loss, optimisers, metrics, decoding, predict_step."""

from htr_lightning.models.base import HTRSystem
from htr_lightning.models.best_practices import BestPracticesSystem
from htr_lightning.models.ctc_system import CTCSystem
from htr_lightning.models.llm_augmented import LLMAugmentedSystem
from htr_lightning.models.loading import load_system, resolve_system_class, system_class
from htr_lightning.models.student import StudentSystem, distillation_loss
from htr_lightning.models.teacher import TeacherSystem

__all__ = ["BestPracticesSystem", "CTCSystem", "HTRSystem", "LLMAugmentedSystem", "StudentSystem",
           "TeacherSystem", "TrOCRSystem", "distillation_loss", "load_system",
           "resolve_system_class", "system_class"]


def __getattr__(name: str):
    # TrOCRSystem is imported on first use: its module loads the transformers vision-encoder-
    # decoder stack (2-5 s here), which CTC runs and every CLI start would otherwise pay.
    if name == "TrOCRSystem":
        from htr_lightning.models.trocr import TrOCRSystem

        return TrOCRSystem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
