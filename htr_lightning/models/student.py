"""The knowledge-distilled student (SPEC section 3, seed 001)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from htr_lightning.models.base import LINE_CUTS
from htr_lightning.models.teacher import TeacherSystem
from htr_lightning.nets.gated_crnn import STUDENT_PRESET, TEACHER_POOLS

log = logging.getLogger("htr_lightning.models")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) of temperature-softened frame distributions, averaged over
    the valid frames of the batch (padding frames are left out).

    Args:
        student: (B, T, C) student log-probabilities (or logits).
        teacher: (B, T, C) teacher log-probabilities (or logits), same frames.
        lengths: (B,) valid frames per line.
        temperature: Softening temperature T.

    Returns:
        A scalar.

    >>> s = torch.log(torch.tensor([[[0.5, 0.5]]]))
    >>> t = torch.log(torch.tensor([[[0.9, 0.1]]]))
    >>> round(float(distillation_loss(s, t, torch.tensor([1]), 1.0)), 4)  # 0.9 ln 1.8 + 0.1 ln 0.2
    0.3681
    """
    log_s = (student.float() / temperature).log_softmax(-1)
    log_t = (teacher.float() / temperature).log_softmax(-1)
    per_frame = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, T)
    frames = torch.arange(per_frame.shape[1], device=per_frame.device)
    valid = frames[None, :] < lengths.to(per_frame.device)[:, None]
    return temperature ** 2 * per_frame[valid].sum() / valid.sum().clamp(min=1)


class StudentSystem(TeacherSystem):
    """Half-size gated CRNN trained with CTC plus distillation from a frozen teacher.

    Loss = CTC + ``kd_weight`` · T² · KL(teacher ‖ student) over the valid frames. The teacher
    is loaded from ``teacher_ckpt`` when fitting starts, kept frozen in eval mode and never
    registered as a submodule, so it is neither optimised nor written into this checkpoint:
    ``StudentSystem.load_from_checkpoint(path)`` needs no teacher file. Network arguments
    default to :data:`~htr_lightning.nets.gated_crnn.STUDENT_PRESET`; the others are those of
    :class:`TeacherSystem`.

    Args:
        teacher_ckpt: Checkpoint of a trained :class:`TeacherSystem` (None: plain CTC).
        kd_weight: Weight of the distillation term (0: plain CTC training).
        temperature: Softening temperature T.
    """

    def __init__(
        self,
        charset: str,
        height: int = 64,
        channels: Sequence[int] = STUDENT_PRESET["channels"],
        pools: Sequence[Sequence[int] | None] = TEACHER_POOLS,
        lstm_hidden: int = STUDENT_PRESET["lstm_hidden"],
        lstm_layers: int = 4,
        heads: int = STUDENT_PRESET["heads"],
        dropout: float = 0.2,
        kernel_size: int = 3,
        se_reduction: int = 16,
        feature_dropout: float = 0.0,
        head_dropout: float = 0.0,
        teacher_ckpt: str | None = None,
        kd_weight: float = 1.0,
        temperature: float = 2.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        scheduler: str = "onecycle",
        warmup: float = 0.1,
        decoder: str | dict = "greedy",
    ) -> None:
        super().__init__(charset, height, channels, pools, lstm_hidden, lstm_layers, heads,
                         dropout, kernel_size, se_reduction, feature_dropout, head_dropout,
                         lr, weight_decay, scheduler, warmup, decoder)
        self.save_hyperparameters()
        if kd_weight < 0 or temperature <= 0:
            raise ValueError(f"need kd_weight >= 0 and temperature > 0, got {kd_weight}, {temperature}")
        self._teacher: list[nn.Module] = []  # a list, so the teacher is not a submodule

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher network once loaded (None before ``fit`` or without one)."""
        return self._teacher[0] if self._teacher else None

    def setup(self, stage: str) -> None:
        """Loads the teacher for fitting and checks that it can teach this student."""
        if stage != "fit" or not self.hparams.teacher_ckpt or self.hparams.kd_weight == 0:
            return
        path = Path(self.hparams.teacher_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"teacher checkpoint {str(path)!r} does not exist")
        teacher = TeacherSystem.load_from_checkpoint(path, map_location="cpu")
        if teacher.hparams.charset != self.hparams.charset:
            raise ValueError(f"teacher {path} was trained on another charset; teacher and student "
                             "must share their output symbols (set the student's data.charset)")
        if teacher.hparams.height != self.hparams.height:
            raise ValueError(f"teacher {path} reads lines {teacher.hparams.height} px high, the "
                             f"student {self.hparams.height} px: they must see the same images")
        widths = torch.tensor([64, 257, 1000])
        t_frames, s_frames = teacher.net.output_lengths(widths), self.net.output_lengths(widths)
        if not torch.equal(t_frames, s_frames):
            raise ValueError(f"teacher {path} and student give different frame counts for widths "
                             f"{widths.tolist()}: {t_frames.tolist()} vs {s_frames.tolist()}; "
                             "their width pooling must match for per-frame distillation")
        rectified = self.data_rectified_lines()
        if rectified is not None and rectified != teacher.rectified_lines:
            log.warning("teacher %s trained on lines %s, the student's lines are %s: the teacher "
                        "reads them worse than its own, and teaches that (set data.reader_options "
                        "rectify as the teacher's data had it)", path,
                        LINE_CUTS[teacher.rectified_lines], LINE_CUTS[rectified])
        teacher.net.requires_grad_(False).eval()
        self._teacher = [teacher.net]

    def on_fit_start(self) -> None:
        """Moves the teacher to the student's device."""
        if self.teacher is not None:
            self.teacher.to(self.device)

    def training_losses(self, batch: dict, log_probs: torch.Tensor, lengths: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """CTC, plus ``kd`` and their weighted sum when a teacher is loaded."""
        losses = super().training_losses(batch, log_probs, lengths)
        if self.teacher is None or "loss" not in losses:
            return losses
        with torch.no_grad():
            teacher_log_probs, _ = self.teacher(batch["images"], batch["widths"])
        kd = distillation_loss(log_probs, teacher_log_probs, lengths, self.hparams.temperature)
        return {"loss": losses["loss"] + self.hparams.kd_weight * kd, "ctc": losses["loss"], "kd": kd}
