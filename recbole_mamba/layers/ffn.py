"""Position-wise feed-forward block shared by the models."""

from __future__ import annotations

import torch
from torch import nn

from recbole_mamba.layers.dropout import Dropout


class FeedForward(nn.Module):
    """``LN(Dropout(W2 act(W1 h)) + h)`` with W1: D -> inner, W2: inner -> D.

    (batch, L, D) -> (batch, L, D). ``inner`` defaults to 4*D (the original code's and Mamba4Rec's FFN).
    """

    def __init__(self, d_model: int, inner_size: int | None = None, dropout: float = 0.1,
                 activation: str = "gelu", layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        inner_size = inner_size or 4 * d_model
        acts = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
        if activation not in acts:
            raise ValueError(f"FeedForward: activation must be one of {sorted(acts)}, got {activation!r}")
        self.w_1 = nn.Linear(d_model, inner_size)
        self.w_2 = nn.Linear(inner_size, d_model)
        self.act = acts[activation]()
        self.dropout = Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.w_2(self.dropout(self.act(self.w_1(h))))
        return self.LayerNorm(self.dropout(out) + h)
