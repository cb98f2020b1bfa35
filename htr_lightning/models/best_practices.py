"""The best-practices CRNN trained with CTC and its CTC shortcut (SPEC section 5, no LLM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from htr_lightning.models.ctc_system import CTCSystem
from htr_lightning.nets.best_practices import PAPER_CNN_CFG, BestPracticesCRNN


class BestPracticesSystem(CTCSystem):
    """Retsinas et al.'s CRNN (DAS 2022) with loss CTC + ``shortcut_weight`` · CTC_shortcut.

    Inference, validation and ``predict`` use the recurrent head alone. Lines are read on a
    ``height × fixed_width`` canvas (128 × 1024 in the paper): set the data's ``height`` and
    ``fixed_width``, which the CLI links to these arguments. Network arguments are those of
    :class:`~htr_lightning.nets.BestPracticesCRNN`; training arguments those of
    :class:`~htr_lightning.models.CTCSystem` (the defaults of ``lr`` and ``weight_decay`` are
    the paper's AdamW settings).

    Args:
        shortcut_weight: Weight of the shortcut's CTC loss (0.1 in the paper).

    Example:
        >>> model = BestPracticesSystem(charset="abc ", height=32, fixed_width=256,
        ...                             cnn_cfg=[[1, 8], "M", [1, 16]], lstm_hidden=8)
        >>> model.transcribe(PIL.Image.new("L", (120, 40), 255)).text  # doctest: +SKIP
    """

    def __init__(
        self,
        charset: str,
        height: int = 128,
        fixed_width: int | None = 1024,
        cnn_cfg: Sequence[Sequence[int] | str] = PAPER_CNN_CFG,
        lstm_hidden: int = 256,
        lstm_layers: int = 3,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
        shortcut_weight: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 5e-5,
        scheduler: str = "onecycle",
        warmup: float = 0.1,
        decoder: str | dict = "greedy",
    ) -> None:
        super().__init__(charset, height, lr, weight_decay, scheduler, warmup, decoder, fixed_width)
        self.save_hyperparameters()
        if shortcut_weight < 0:
            raise ValueError(f"shortcut_weight must be >= 0, got {shortcut_weight}")
        self.net = BestPracticesCRNN(len(self.tokenizer), height, cnn_cfg, lstm_hidden,
                                     lstm_layers, dropout, head_dropout)

    def training_forward(self, batch: dict) -> tuple:
        """``(log_probs, lengths, shortcut_log_probs, rnn_layers)`` of one forward pass."""
        return tuple(self.net.forward_all(batch["images"], batch["widths"]))

    def training_losses(self, batch: dict, log_probs: torch.Tensor, lengths: torch.Tensor,
                        shortcut_log_probs: torch.Tensor, rnn_layers: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """``ctc``, ``ctc_shortcut`` and their weighted sum ``loss``.

        Args:
            batch: The batch.
            log_probs: (B, T, C) recurrent head.
            lengths: (B,) valid frames.
            shortcut_log_probs: (B, T, C) CTC shortcut.
            rnn_layers: Each BiLSTM layer's (B, T, 2·hidden) output (used by subclasses).
        """
        losses = super().training_losses(batch, log_probs, lengths)
        if "loss" not in losses:
            return losses
        shortcut = self.ctc_loss(shortcut_log_probs, lengths, batch["texts"], batch["ids"])
        return {"loss": losses["loss"] + self.hparams.shortcut_weight * shortcut,
                "ctc": losses["loss"], "ctc_shortcut": shortcut}
