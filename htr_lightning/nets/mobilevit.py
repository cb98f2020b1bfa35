"""MobileViT block (Mehta & Rastegari, ICLR 2022) with a padding mask. Plain nn.Module.

Seed 004 inserts two of these into the best-practices backbone (patch sizes 4 and 8); the
original best-practices network has none. Written here rather than taken from transformers'
MobileViT, whose layers take no padding mask (a line would change with the batch it is padded
in) and would tie this plain-torch network to a transformers config class.
"""

from __future__ import annotations

import torch
from torch import nn

from htr_lightning.nets.blocks import self_attention


def conv_bn_silu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Convolution (no bias) -> BatchNorm -> SiLU, "same" padding. (B, C_in, H, W) -> (B, C_out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.SiLU())


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + attention(LN(x)), then x + feed-forward(LN(x)).

    Written out rather than taken from ``nn.TransformerEncoderLayer``, whose attention, traced
    for ONNX, freezes the sequence length (see :func:`~htr_lightning.nets.blocks.self_attention`).

    Shapes: x (N, L, D), padding (N, L) True where padded, or None -> (N, L, D).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self_attention(self.attn, self.norm1(x), padding))
        return x + self.dropout(self.ffn(self.norm2(x)))


class MobileViTBlock(nn.Module):
    """Local convolutions, then a transformer across patches, fused with the input.

    3×3 conv-BN-SiLU and 1×1 conv to ``dim``; the map is cut into ``patch × patch`` patches
    and, for each pixel position inside a patch, a pre-norm transformer attends across all
    patches (MobileViT's unfold); fold back, 1×1 conv-BN-SiLU to C, concatenate with the input,
    3×3 conv-BN-SiLU to C. Padding columns are zeroed between the steps that mix columns and are
    masked out of attention, so a line gives the same output alone or padded in a batch.

    Args:
        channels: Input and output channels C.
        patch: Patch side; must divide the feature height.
        dim: Transformer width (default C).
        heads: Attention heads (must divide ``dim``).
        layers: Transformer layers.
        dropout: Dropout inside the transformer.

    Shapes: x (B, C, H, W), mask (B, 1, 1, W) of 0/1 or None (no padding) -> (B, C, H, W).
    """

    def __init__(self, channels: int, patch: int, dim: int | None = None, heads: int = 4,
                 layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        dim = dim or channels
        self.patch = patch
        self.local = nn.Sequential(conv_bn_silu(channels, channels, 3),
                                   nn.Conv2d(channels, dim, 1, bias=False))
        self.transformer = nn.ModuleList(TransformerLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.project = conv_bn_silu(dim, channels, 1)
        self.fuse = conv_bn_silu(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch
        if h % p:
            raise ValueError(f"MobileViT patch {p} does not divide the feature height {h}")
        y = self.local(x)
        pad = -w % p  # the width is padded to whole patches; those columns count as padding
        y = nn.functional.pad(y, (0, pad))
        d, hp, wp = y.shape[1], h // p, (w + pad) // p
        # (B, d, hp·p, wp·p) -> (B·p·p, hp·wp, d): one sequence per pixel position in a patch
        tokens = y.reshape(b, d, hp, p, wp, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, hp * wp, d)
        padding = None
        if mask is not None or pad:
            real = mask[:, 0, 0, :] if mask is not None else y.new_ones(b, w)
            cols = nn.functional.pad(real, (0, pad)) == 0  # (B, W + pad) True = padding
            cols = cols.reshape(b, 1, wp, p).permute(0, 3, 1, 2)  # (B, p_w, 1, wp)
            padding = cols.expand(b, p, hp, wp).reshape(b, 1, p, hp * wp).expand(b, p, p, hp * wp)
            padding = padding.reshape(b * p * p, hp * wp)
            # A sequence made only of padding influences no real pixel; unmasking it avoids NaNs.
            padding = padding & ~padding.all(dim=1, keepdim=True)
        for layer in self.transformer:
            tokens = layer(tokens, padding)
        tokens = self.norm(tokens)
        y = tokens.reshape(b, p, p, hp, wp, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w + pad)
        y = self.project(y[..., :w])
        if mask is not None:
            y = y * mask
        y = self.fuse(torch.cat([x, y], dim=1))
        return y if mask is None else y * mask
