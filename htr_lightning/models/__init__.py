"""LightningModules ("systems"): loss, optimisers, metrics, decoding, predict_step."""

from htr_lightning.models.best_practices import BestPracticesSystem
from htr_lightning.models.ctc_system import CTCSystem
from htr_lightning.models.llm_augmented import LLMAugmentedSystem
from htr_lightning.models.loading import load_system, resolve_system_class, system_class
from htr_lightning.models.student import StudentSystem, distillation_loss
from htr_lightning.models.teacher import TeacherSystem

__all__ = ["BestPracticesSystem", "CTCSystem", "LLMAugmentedSystem", "StudentSystem",
           "TeacherSystem", "distillation_loss", "load_system", "resolve_system_class",
           "system_class"]
