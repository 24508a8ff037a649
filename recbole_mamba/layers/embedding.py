"""Input layer: item embeddings scaled, plus learned positions, then dropout."""

from __future__ import annotations

import math

import torch
from torch import nn

from recbole_mamba.layers.dropout import Dropout


class ScaledPositionalEmbedding(nn.Module):
    """The reference implementation's input layer (alokamgnaneswarasai/MambaRec): Dropout(E[i] * sqrt(D) + P[pos]), learned positions.

    Takes the item embeddings (batch, L, D) -> (batch, L, D). Positions are 0..L-1 from the left
    (RecBole pads at the end, so real items always sit at positions 0..len-1).
    """

    def __init__(self, dim: int, max_len: int, dropout: float, scale: bool = True) -> None:
        super().__init__()
        self.position_embedding = nn.Embedding(max_len, dim)
        self.scale = math.sqrt(dim) if scale else 1.0
        self.dropout = Dropout(dropout)

    def step(self, item_emb: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """One position per row: item_emb (batch, D) at positions ``count`` (batch,) -> (batch, D).

        Past the last learned position (count >= MAX_ITEM_LIST_LENGTH) the last position
        embedding is reused; a model retrained on a window would see the last L items at
        positions 0..L-1 instead, so the two then differ.
        """
        pos = count.clamp(max=self.position_embedding.num_embeddings - 1)
        return self.dropout(item_emb * self.scale + self.position_embedding(pos))

    def forward(self, item_emb: torch.Tensor) -> torch.Tensor:
        length = item_emb.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds MAX_ITEM_LIST_LENGTH "
                f"{self.position_embedding.num_embeddings}"
            )
        pos = torch.arange(length, device=item_emb.device)
        return self.dropout(item_emb * self.scale + self.position_embedding(pos))
