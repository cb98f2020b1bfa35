"""Building blocks of the gated CRNN (HTR-JAND style). Plain nn.Modules, no Lightning.

Every block that mixes information across the width takes a padding mask so that a line
gives the same output alone or padded inside a batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def exporting() -> bool:
    """Whether the module is being traced into a graph (ONNX export, ``torch.jit.trace``)
    rather than run eagerly: a traced graph keeps no Python branch on tensor values."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


class FullGatedConv2d(nn.Module):
    """Convolution to 2×C channels; output = first half × sigmoid(second half).

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.glu(self.conv(x), dim=1)  # one fused kernel for value·σ(gate)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a masked mean, so padding columns do not dilute it.

    Shapes: x (B, C, H, W), mask (B, 1, 1, W) of 0/1 or None (no padding) -> (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            squeezed = x.mean(dim=(2, 3))  # (B, C)
        else:
            area = (mask.sum(dim=(2, 3)) * x.shape[2]).clamp(min=1)  # (B, 1)
            squeezed = (x * mask).sum(dim=(2, 3)) / area  # (B, C)
        return x * self.fc(squeezed)[:, :, None, None]


class GatedConvBlock(nn.Module):
    """FullGatedConv2d -> BatchNorm -> ReLU -> SqueezeExcite -> optional MaxPool.

    Shapes: x (B, C_in, H, W), mask (B, 1, 1, W) or None (no padding) ->
    (B, C_out, H/ph, W/pw) and its mask.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | None,
                 kernel_size: int = 3, se_reduction: int = 16) -> None:
        super().__init__()
        self.conv = FullGatedConv2d(in_channels, out_channels, kernel_size)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_channels, se_reduction)
        self.pool = nn.MaxPool2d(pool) if pool else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Zeroing the padding after the norm makes the next convolution see exactly what zero
        # padding of an unpadded line would give it.
        x = self.act(self.norm(self.conv(x)))
        if mask is not None:
            x = x * mask
        x = self.se(x, mask)
        if self.pool is not None:
            x = self.pool(x)
            if mask is not None:
                # A pooled column is valid when the last column of its window is (masks are
                # prefixes).
                step = self.pool.kernel_size[1]
                mask = mask[..., step - 1 :: step][..., : x.shape[-1]]
        return x, mask


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sine/cosine position code of "Attention is all you need".

    Shapes: (B, T, D) -> (B, T, D).
    """

    def __init__(self, dim: int, max_len: int = 4096) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An exported graph cannot keep this check; there the preprocessing's max_width (4096 px
        # by default, at most 1024 frames) keeps lines far below the table's length.
        if not exporting() and x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} frames exceeds the positional table "
                             f"({self.table.shape[0]}); raise max_len or shorten the line")
        return x + self.table[: x.shape[1]].to(x.dtype)


class SelfAttentionBlock(nn.Module):
    """Multi-head self-attention with residual connection and LayerNorm.

    The parameters are those of ``nn.MultiheadAttention`` (same state-dict names), but the
    attention is computed here with ``scaled_dot_product_attention``, the same computation
    ``nn.MultiheadAttention`` makes when no weights are asked for (identical in training, within
    5e-7 of its eval fast path): traced for ONNX, its Python path froze the sequence length
    into a Reshape, so the exported model failed on lines of any other width.

    Shapes: x (B, T, D), padding (B, T) True where padded -> (B, T, D).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3·D)
        qkv = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, D/heads)
        keep = ~padding[:, None, None, :]  # (B, 1, 1, T): keys that may be attended to
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=attn.dropout if self.training else 0.0)
        out = attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, T, D)
        return self.norm(x + out)


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverses the first ``lengths[b]`` steps of each row; padding stays where it is.

    Shapes: x (B, T, D), lengths (B,) -> (B, T, D).
    """
    b, t, _ = x.shape
    steps = torch.arange(t, device=x.device)[None, :].expand(b, t)
    flipped = lengths.to(x.device)[:, None] - 1 - steps
    index = torch.where(flipped >= 0, flipped, steps)
    return x.gather(1, index[..., None].expand_as(x))


class MaskedBiLSTM(nn.Module):
    """Multi-layer bidirectional LSTM that ignores right padding, like a packed sequence.

    Written by hand because ``pack_padded_sequence`` makes PyTorch fall back from the fused
    oneDNN LSTM to a per-step loop: for 16 lines × 40 frames × 4 layers on this CPU, forward +
    backward took 0.25 s packed against 0.09-0.12 s here. The backward direction runs a plain
    LSTM over each line reversed within its own length, so padding never reaches real frames.
    Same parameters as ``nn.LSTM(bidirectional=True)``.

    Shapes: x (B, T, D_in), lengths (B,) -> (B, T, 2·hidden).
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [input_size] + [2 * hidden] * (layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i:
                x = self.dropout(x)
            back = reverse_valid(bwd(reverse_valid(x, lengths))[0], lengths)
            x = torch.cat([fwd(x)[0], back], dim=-1)
        return x
