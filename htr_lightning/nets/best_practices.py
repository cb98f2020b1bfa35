"""The best-practices CRNN (Retsinas et al., "Best practices for a handwritten text recognition
system", DAS 2022). Plain nn.Modules, no Lightning.

Input 1×128×1024 (the paper's canvas), ink = 1 on background 0:
7×7 conv stride (4, 2) with 32 channels + ReLU -> (B, 32, 32, 512) -> ResNet BasicBlocks and
max-pools from ``cnn_cfg`` (paper: 2×64, M, 4×128, M, 4×256 -> (B, 256, 8, 128)) -> max over
the height (column max-pool) -> (B, 128, 256) -> head "both" (the paper's CTCtopB): a 3-layer
BiLSTM (256 per direction) -> dropout -> Linear -> CTC log-probabilities, and the CTC shortcut:
dropout -> 1×3 convolution over the pooled columns -> CTC log-probabilities (training only).
One frame covers 8 pixels of width (2 from the stem, 2 per "M").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from htr_lightning.nets.blocks import MaskedBiLSTM, exporting
from htr_lightning.nets.mobilevit import MobileViTBlock

# The configuration of the paper's released code (2022, ``config.py``: 2×64, M, 4×128, M,
# 4×256). The 2024 rework of that repository uses 2×64, M, 3×128, M, 2×256; seed 004 adds
# MobileViT blocks after each "M" of the latter (:data:`SEED004_CNN_CFG`).
PAPER_CNN_CFG: tuple = ([2, 64], "M", [4, 128], "M", [4, 256])
SEED004_CNN_CFG: tuple = ([2, 64], "M", "mobilevit4", [3, 128], "M", "mobilevit8", [2, 256])

STEM_CHANNELS = 32


class BasicBlock(nn.Module):
    """ResNet basic block (3×3 conv-BN-ReLU, 3×3 conv-BN, + shortcut, ReLU), 1×1 conv-BN
    shortcut when the channels change; padding columns are zeroed after each convolution so
    they never leak into real columns.

    Shapes: x (B, C_in, H, W), mask (B, 1, 1, W) of 0/1 or None -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        if mask is not None:
            y = y * mask
        y = torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
        return y if mask is None else y * mask


class BestPracticesOutputs(NamedTuple):
    """Everything one forward pass of :class:`BestPracticesCRNN` computes."""

    log_probs: torch.Tensor
    """(B, T, C) log-probabilities of the recurrent head."""
    lengths: torch.Tensor
    """(B,) valid frames."""
    shortcut_log_probs: torch.Tensor
    """(B, T, C) log-probabilities of the CTC shortcut."""
    rnn_layers: list[torch.Tensor]
    """Output of each BiLSTM layer, first to last, each (B, T, 2·lstm_hidden)."""


class BestPracticesCRNN(nn.Module):
    """ResNet + column max-pool + BiLSTM CRNN with a CTC shortcut (best-practices paper).

    Args:
        num_classes: Output classes including the CTC blank.
        height: Input height (the stem divides it by 4, each "M" by 2).
        cnn_cfg: Backbone after the stem: ``[n, channels]`` adds n BasicBlocks, ``"M"`` a 2×2
            max-pool, ``"mobilevit<p>"`` a :class:`MobileViTBlock` with patch p (e.g.
            ``"mobilevit4"``). Plain values, so it is a hyperparameter.
        lstm_hidden: Hidden units per direction of the BiLSTM.
        lstm_layers: BiLSTM layers.
        dropout: Dropout between BiLSTM layers.
        head_dropout: Dropout before the output layer and before the shortcut convolution.
    """

    def __init__(
        self,
        num_classes: int,
        height: int = 128,
        cnn_cfg: Sequence = PAPER_CNN_CFG,
        lstm_hidden: int = 256,
        lstm_layers: int = 3,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if height % 4:
            raise ValueError(f"height {height} is not divisible by the stem's stride 4")
        self.stem = nn.Conv2d(1, STEM_CHANNELS, 7, stride=(4, 2), padding=3)
        blocks, channels, feature_height = [], STEM_CHANNELS, height // 4
        for entry in cnn_cfg:
            if entry == "M":
                if feature_height % 2:
                    raise ValueError(f"height {height}: a max-pool meets an odd feature height")
                blocks.append(nn.MaxPool2d(2))
                feature_height //= 2
            elif isinstance(entry, str) and entry.startswith("mobilevit") and entry[9:].isdigit():
                patch = int(entry[9:])
                if feature_height % patch:
                    raise ValueError(f"{entry}: patch {patch} does not divide the feature height "
                                     f"{feature_height} at its position (input height {height})")
                blocks.append(MobileViTBlock(channels, patch))
            elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
                for _ in range(int(entry[0])):
                    blocks.append(BasicBlock(channels, int(entry[1])))
                    channels = int(entry[1])
            else:
                raise ValueError(f"cnn_cfg entry {entry!r}: expected [count, channels], 'M' or "
                                 "'mobilevit<patch>'")
        self.blocks = nn.ModuleList(blocks)
        self.lstm = MaskedBiLSTM(channels, lstm_hidden, lstm_layers, dropout)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(2 * lstm_hidden, num_classes))
        self.shortcut = nn.Sequential(nn.Dropout(head_dropout),
                                      nn.Conv1d(channels, num_classes, 3, padding=1))

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        """Frames produced for input widths: (B,) -> (B,).

        A frame counts when every input column it pools is real: ceil(w / 2) after the
        stride-2 stem (its output column j is centred on input column 2j), then floor(· / 2)
        per max-pool.
        """
        return self._widths_per_stage(widths)[-1]

    def _widths_per_stage(self, widths: torch.Tensor) -> list[torch.Tensor]:
        widths = torch.div(widths + 1, 2, rounding_mode="floor")
        stages = [widths]
        for block in self.blocks:
            if isinstance(block, nn.MaxPool2d):
                widths = torch.div(widths, 2, rounding_mode="floor")
            stages.append(widths)
        return stages

    def forward(self, images: torch.Tensor, widths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame log-probabilities of the recurrent head (what inference uses).

        Args:
            images: (B, 1, H, W) float, ink = 1, zero padding on the right.
            widths: (B,) content widths; None means every image fills W.

        Returns:
            log_probs (B, T, num_classes) with T = W/8 for the paper's configuration, and
            lengths (B,) valid frames.
        """
        _, lengths, rnn_layers = self._encode(images, widths)
        return self.head(rnn_layers[-1]).log_softmax(-1), lengths

    def forward_all(self, images: torch.Tensor, widths: torch.Tensor | None = None
                    ) -> BestPracticesOutputs:
        """The recurrent head, the CTC shortcut and every BiLSTM layer's output (for training)."""
        columns, lengths, rnn_layers = self._encode(images, widths)
        shortcut = self.shortcut(columns).transpose(1, 2).log_softmax(-1)  # (B, T, C)
        return BestPracticesOutputs(self.head(rnn_layers[-1]).log_softmax(-1), lengths, shortcut,
                                    rnn_layers)

    def _encode(self, images: torch.Tensor, widths: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Pooled columns (B, C, T), lengths (B,) and each BiLSTM layer's (B, T, 2h) output."""
        b, _, _, w = images.shape
        if widths is None:
            widths = torch.full((b,), w, dtype=torch.long, device=images.device)
        widths = widths.to(images.device)
        # The masks cost time, so eager mode skips them when nothing is padded; an exported
        # graph cannot branch on its input's values and always carries them (see GatedCRNN).
        padded = exporting() or bool((widths < w).any())
        stage_widths = self._widths_per_stage(widths)  # after the stem, then after each block

        def masked(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if not padded:
                return x, None
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < valid[:, None]
            mask = mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, W')
            return x * mask, mask

        x, mask = masked(torch.relu(self.stem(images)), stage_widths[0])  # (B, 32, H/4, ceil(W/2))
        for block, valid in zip(self.blocks, stage_widths[1:]):
            if isinstance(block, nn.MaxPool2d):
                x, mask = masked(block(x), valid)  # exact: a kept column pools real columns only
            else:
                x = block(x, mask)  # (B, C, H', W'), padding columns zeroed
        columns = x.amax(dim=2)  # column max-pool: (B, C, T), padding frames are 0
        t = columns.shape[-1]
        lengths = self.output_lengths(widths).clamp(min=1, max=t)
        return columns, lengths, self.lstm.layer_outputs(columns.transpose(1, 2), lengths)
