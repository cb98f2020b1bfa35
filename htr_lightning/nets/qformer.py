"""Q-Former connector from recogniser features to a language model's input embeddings.
Plain nn.Modules, no Lightning, no language model.

BLIP-2's querying transformer in the form seed 004 uses: a line's frame features are resampled
to a fixed number of positions, learned query tokens attend to them (self-attention among the
queries, cross-attention to the features, feed-forward; pre-norm layers), and linear layers
expand the queries to the language model's hidden size. A Q-Former layer is exactly torch's
``nn.TransformerDecoderLayer`` (self-attention over the queries, cross-attention to the
features, feed-forward), which is used as is; transformers' ``Blip2QFormerModel`` would tie this
plain-torch network to a transformers config class for the same computation.
"""

from __future__ import annotations

import torch
from torch import nn


def resample_frames(features: torch.Tensor, lengths: torch.Tensor, positions: int) -> torch.Tensor:
    """Linearly resamples the valid frames of each line to ``positions`` evenly spaced points
    (the first and last frames are kept), so every line gives the same number of positions.

    Written by hand because ``F.interpolate`` resamples whole rows: each line here has its own
    valid length inside the padded batch.

    Args:
        features: (B, T, D) frame features, right-padded.
        lengths: (B,) valid frames per line (>= 1).
        positions: Output positions P.

    Returns:
        (B, P, D).

    >>> x = torch.tensor([[[0.0], [2.0], [99.0]]])  # 2 valid frames, 1 padding frame
    >>> resample_frames(x, torch.tensor([2]), 5)[0, :, 0].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0]
    """
    last = (lengths.to(features.device) - 1).clamp(min=0).to(features.dtype)  # (B,)
    steps = torch.linspace(0, 1, positions, device=features.device, dtype=features.dtype)
    where = steps[None, :] * last[:, None]  # (B, P) fractional frame index
    lo = where.floor().long()
    hi = torch.minimum(lo + 1, last.long()[:, None])
    frac = (where - lo.to(where.dtype))[..., None]
    d = features.shape[-1]
    take = lambda idx: features.gather(1, idx[..., None].expand(-1, -1, d))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


class QFormerConnector(nn.Module):
    """Learned queries cross-attending to resampled frame features, expanded to the LM width.

    Args:
        in_dim: Feature width D (512 for the best-practices BiLSTM's first layer).
        out_dim: Hidden size of the language model (read from its config by the caller).
        num_queries: Query tokens Q, the number of embeddings handed to the LM.
        positions: Positions P the features are resampled to.
        layers: Q-Former layers.
        heads: Attention heads (must divide ``in_dim``).
        expand_dim: Width of the hidden layer of the expansion (D -> expand_dim -> out_dim).
        dropout: Dropout inside the Q-Former layers.

    Shapes: features (B, T, D), lengths (B,) -> (B, Q, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 64, positions: int = 128,
                 layers: int = 2, heads: int = 8, expand_dim: int = 1024,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.positions = positions
        self.queries = nn.Parameter(torch.randn(1, num_queries, in_dim) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(1, positions, in_dim) * 0.02)
        layer = nn.TransformerDecoderLayer(in_dim, heads, 4 * in_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.qformer = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(in_dim))
        self.expand = nn.Sequential(nn.Linear(in_dim, expand_dim), nn.GELU(),
                                    nn.Linear(expand_dim, out_dim))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        memory = resample_frames(features, lengths, self.positions) + self.position_embedding
        queries = self.queries.expand(features.shape[0], -1, -1)
        return self.expand(self.qformer(queries, memory))  # (B, Q, out_dim)
