"""The HTR-JAND style gated CRNN (teacher; the student is ``STUDENT_PRESET`` of the same class).

Input 1×H×W (H = 64 by default), ink = 1 on background 0:
``[FullGatedConv2d -> BN -> ReLU -> SE -> MaxPool] × 5`` (channels 32, 64, 128, 128, 256;
pools (2,2), (2,2), (2,2), (2,1), none) -> (B, 256, H/16, W/8) -> (B, W/8, 256·H/16) ->
Linear -> sinusoidal positions -> BiLSTM (4 layers, 128 per direction) -> self-attention
(2 heads, residual + LayerNorm) -> Linear -> log-softmax over the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from htr_lightning.nets.blocks import (
    GatedConvBlock,
    MaskedBiLSTM,
    SelfAttentionBlock,
    SinusoidalPositionalEncoding,
    exporting,
)

TEACHER_CHANNELS = (32, 64, 128, 128, 256)
TEACHER_POOLS = ((2, 2), (2, 2), (2, 2), (2, 1), None)

# Seed 001's student: the same design with half the channels (convolutions and recurrent
# width) and one attention head. Same pools, so its frames align with the teacher's.
STUDENT_PRESET = {"channels": (16, 32, 64, 64, 128), "lstm_hidden": 64, "heads": 1}


class GatedCRNN(nn.Module):
    """Gated-convolution CRNN with BiLSTM and self-attention, for CTC.

    Args:
        num_classes: Output classes including the CTC blank.
        height: Input height; must be divisible by the product of the height pools.
        channels: Output channels of the five convolution blocks.
        pools: Max-pool (height, width) after each block, or None.
        lstm_hidden: Hidden units per direction; the model width is twice this.
        lstm_layers: BiLSTM layers.
        heads: Self-attention heads.
        dropout: Dropout between LSTM layers and in attention.
        kernel_size: Kernel of the gated convolutions.
        se_reduction: Squeeze-excite reduction ratio.
        feature_dropout: Dropout on the convolution features of every frame, before they enter
            the recurrent part (Puigcerver 2017 drops out before each recurrent layer). 0 in the
            SPEC design; a regulariser for small collections.
        head_dropout: Dropout on the self-attention output, before the output layer.
    """

    def __init__(
        self,
        num_classes: int,
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
    ) -> None:
        super().__init__()
        if len(channels) != len(pools):
            raise ValueError(f"{len(channels)} channel entries but {len(pools)} pool entries")
        pools = [tuple(p) if p else None for p in pools]
        h_factor = 1
        for p in pools:
            h_factor *= p[0] if p else 1
        if height % h_factor:
            raise ValueError(f"height {height} is not divisible by the height pooling {h_factor}")
        self.width_factors = [p[1] for p in pools if p]
        blocks, in_ch = [], 1
        for out_ch, pool in zip(channels, pools):
            blocks.append(GatedConvBlock(in_ch, out_ch, pool, kernel_size, se_reduction))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        dim = 2 * lstm_hidden
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.proj = nn.Linear(in_ch * (height // h_factor), dim)
        self.pos = SinusoidalPositionalEncoding(dim)
        self.lstm = MaskedBiLSTM(dim, lstm_hidden, lstm_layers, dropout)
        self.attn = SelfAttentionBlock(dim, heads, dropout=dropout / 2)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(dim, num_classes)

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        """Frames produced for input widths: (B,) -> (B,)."""
        for f in self.width_factors:
            widths = torch.div(widths, f, rounding_mode="floor")
        return widths

    def forward(self, images: torch.Tensor, widths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame log-probabilities.

        Args:
            images: (B, 1, H, W) float, ink = 1, zero padding on the right.
            widths: (B,) content widths; None means every image fills W.

        Returns:
            log_probs (B, T, num_classes) with T = W / (product of the width pools: 8 for
            TEACHER_POOLS), and lengths (B,) valid frames.
        """
        b, _, _, w = images.shape
        if widths is None:
            widths = torch.full((b,), w, dtype=torch.long, device=images.device)
        widths = widths.to(images.device)
        mask = None
        # The masks cost time, so eager mode skips them when nothing is padded. An exported graph
        # cannot branch on its input's values: it always carries them (all ones when nothing is
        # padded, which gives the same output).
        if exporting() or bool((widths < w).any()):
            mask = torch.arange(w, device=images.device)[None, :] < widths[:, None]
            mask = mask[:, None, None, :].to(images.dtype)
        x = images
        for block in self.blocks:
            x, mask = block(x, mask)  # (B, C, H', W')
        lengths = self.output_lengths(widths).clamp(min=1)
        x = x.permute(0, 3, 1, 2).flatten(2)  # (B, T, C·H')
        x = self.pos(self.proj(self.feature_dropout(x)))  # (B, T, D)
        t = x.shape[1]
        lengths = lengths.clamp(max=t)
        x = self.lstm(x, lengths)  # (B, T, D)
        padding = torch.arange(t, device=x.device)[None, :] >= lengths[:, None]
        x = self.attn(x, padding)
        return self.head(self.head_dropout(x)).log_softmax(-1), lengths
