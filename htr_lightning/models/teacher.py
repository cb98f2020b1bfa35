"""The CTC teacher (SPEC section 2)."""

from __future__ import annotations

from collections.abc import Sequence

from htr_lightning.models.ctc_system import CTCSystem
from htr_lightning.nets.gated_crnn import TEACHER_CHANNELS, TEACHER_POOLS, GatedCRNN


class TeacherSystem(CTCSystem):
    """HTR-JAND style gated CRNN trained with CTC.

    Network arguments are those of :class:`~htr_lightning.nets.GatedCRNN`; training arguments
    are those of :class:`~htr_lightning.models.CTCSystem`. All are plain values, saved in the
    checkpoint, so ``TeacherSystem.load_from_checkpoint(path)`` needs nothing else.

    Example:
        >>> model = TeacherSystem(charset="abc ", height=32, lstm_layers=1)
        >>> model.transcribe(PIL.Image.new("L", (120, 40), 255)).text  # doctest: +SKIP
    """

    def __init__(
        self,
        charset: str,
        height: int = 64,
        channels: Sequence[int] = TEACHER_CHANNELS,
        pools: Sequence[Sequence[int] | None] = TEACHER_POOLS,
        lstm_hidden: int = 128,
        lstm_layers: int = 4,
        heads: int = 2,
        dropout: float = 0.2,
        kernel_size: int = 3,
        se_reduction: int = 16,
        feature_dropout: float = 0.0,
        head_dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        scheduler: str = "onecycle",
        warmup: float = 0.1,
        decoder: str | dict = "greedy",
    ) -> None:
        super().__init__(charset, height, lr, weight_decay, scheduler, warmup, decoder)
        self.save_hyperparameters()
        self.net = GatedCRNN(len(self.tokenizer), height, channels, pools, lstm_hidden,
                             lstm_layers, heads, dropout, kernel_size, se_reduction,
                             feature_dropout, head_dropout)
