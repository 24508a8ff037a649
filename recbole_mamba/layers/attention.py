"""Causal multi-head self-attention (the attention branch of MoEMaTrRec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mamba.layers.dropout import Dropout
from recbole_mamba.layers.state import LayerState


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t only.

    (batch, L, D) -> (batch, L, D), followed by ``LN(Dropout(out) + x)``. With RecBole's
    right-padding, a causal mask is also a padding mask for every real position: the keys a real
    position sees are all real.
    """

    def __init__(self, d_model: int, n_heads: int = 1, attn_dropout: float = 0.1,
                 hidden_dropout: float = 0.1, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden_size ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = attn_dropout
        self.dropout = Dropout(hidden_dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, L, D) -> (batch, L, D)."""
        return self._attend(x)[0]

    def _attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (batch, L, D) -> (out (batch, L, D), keys, values (batch, L, H, D/H))."""
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )
        ctx = ctx.transpose(1, 2).reshape(batch, length, d_model)
        return self.LayerNorm(self.dropout(self.out(ctx)) + x), k.transpose(1, 2), v.transpose(1, 2)

    # ------------------------------------------------------------------ online state
    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        """x (batch, L, D) -> (out (batch, L, D), {"keys", "values": (batch, L, H, D/H)}).

        The state is the key/value cache :meth:`step` reads: with right-padding, row b's real
        entries are its first ``length_b``, and causality keeps padding out of every real one.
        """
        out, keys, values = self._attend(x)
        return out, {"keys": keys.contiguous(), "values": values.contiguous()}

    def step(self, x: torch.Tensor, state: LayerState, count: torch.Tensor) -> torch.Tensor:
        """One new position per row (inference; O(t) per row): x (batch, D) is the input at
        position ``count[b]`` of row b -> (batch, D). The cache holds positions 0..count[b]-1;
        this position is written at ``count[b]`` in place, and a full cache is replaced by one of
        twice the capacity first."""
        batch, d_model = x.shape
        capacity = state["keys"].shape[1]
        needed = int(count.max()) + 1
        if needed > capacity:
            grow = max(needed, 2 * capacity) - capacity
            for name in ("keys", "values"):
                t = state[name]
                state[name] = torch.cat([t, t.new_zeros(t.shape[0], grow, *t.shape[2:])], dim=1)
        keys, values = state["keys"], state["values"]
        q, k, v = self.qkv(x).view(batch, 3, self.n_heads, self.head_dim).unbind(1)
        rows = torch.arange(batch, device=x.device)
        keys[rows, count] = k
        values[rows, count] = v
        scores = torch.einsum("bhd,bchd->bhc", q, keys) / (self.head_dim ** 0.5)
        visible = torch.arange(keys.shape[1], device=x.device).view(1, -1) <= count.view(-1, 1)
        scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
        ctx = torch.einsum("bhc,bchd->bhd", torch.softmax(scores, dim=-1), values).reshape(batch, d_model)
        return self.LayerNorm(self.dropout(self.out(ctx)) + x)
