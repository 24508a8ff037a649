"""MoEMaTrRec: a gated mixture of a Mamba branch and a causal attention branch (the original paper's Figure 4,
code ``--backbone sasmamba``).

Per layer, on x (batch, L, D)::

    m = Mamba(x)
    a = LN(Dropout(MHA(x)) + x)                  # causal mask (the original code has none; see below)
    g = sigmoid(Linear(D, 1)(mean of x))         # gate
    h = g * m + (1 - g) * a
    out = LN(Dropout(FFN(h)) + h)                # FFN: Linear(D, 4D) - GELU - Linear

The original code's attention has no mask, so every position sees the future; trained on all positions it
would read its own target. The causal mask is therefore always on. The gate:
``gate_causal: True`` (default) gates position t by the mean of positions <= t, so nothing
after t (and no padding) reaches position t; ``gate_causal: False`` is the original code's single gate per
sequence, the mean over the sequence's real positions (fine for last-position training only).
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_mamba.layers import CausalSelfAttention, FeedForward
from recbole_mamba.layers import ScaledPositionalEmbedding
from recbole_mamba.models.base import MambaSequentialBase, resolve_dropout


class MoELayer(nn.Module):
    """One MoEMaTrRec layer: (batch, L, D), mask (batch, L) -> (batch, L, D)."""

    def __init__(self, mamba: nn.Module, d_model: int, n_heads: int, dropout: float,
                 attn_dropout: float, inner_size: int, hidden_act: str, eps: float,
                 gate_causal: bool) -> None:
        super().__init__()
        self.mamba = mamba
        self.attention = CausalSelfAttention(d_model, n_heads, attn_dropout, dropout, eps)
        self.gate = nn.Linear(d_model, 1)
        self.gate_causal = gate_causal
        self.ffn = FeedForward(d_model, inner_size, dropout, hidden_act, eps)

    def gate_values(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Gate in (0, 1): (batch, L, 1) when causal, else (batch, 1, 1)."""
        m = mask.unsqueeze(-1).to(x.dtype)
        if self.gate_causal:
            count = torch.cumsum(m, dim=1).clamp_min(1.0)
            mean = torch.cumsum(x * m, dim=1) / count
        else:
            mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
        return torch.sigmoid(self.gate(mean))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        g = self.gate_values(x, mask)
        h = g * self.mamba(x) + (1.0 - g) * self.attention(x)
        return self.ffn(h)

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor):
        """(batch, L, D) -> (out, {"conv", "ssm", "keys", "values", "gate_sum"}) at each row's end."""
        g = self.gate_values(x, mask)
        m, conv_state, ssm_state = self.mamba.forward_with_state(x, lengths)
        a, cache = self.attention.forward_with_state(x, lengths, mask)
        gate_sum = (x * mask.unsqueeze(-1).to(x.dtype)).sum(dim=1)
        return self.ffn(g * m + (1.0 - g) * a), {"conv": conv_state, "ssm": ssm_state, **cache, "gate_sum": gate_sum}

    def step(self, x: torch.Tensor, state, count: torch.Tensor) -> torch.Tensor:
        """One position per row: x (batch, D) at positions ``count`` -> (batch, D).

        The Mamba branch and the gate's running mean cost O(1); the attention branch reads the
        key/value cache, O(count) per row (the cache doubles when full).
        """
        state["gate_sum"] += x
        g = torch.sigmoid(self.gate(state["gate_sum"] / (count + 1).unsqueeze(-1).to(x.dtype)))
        m = self.mamba.step(x.unsqueeze(1), state["conv"], state["ssm"])[0].squeeze(1)
        a = self.attention.step(x, state, count)
        return self.ffn(g * m + (1.0 - g) * a)


class MoEMaTrRec(MambaSequentialBase):
    """MoEMaTrRec for RecBole. Config keys: see ``properties/model/MoEMaTrRec.yaml``."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        dropout = resolve_dropout(config["dropout_prob"], dataset, "MoEMaTrRec")
        eps = float(config["layer_norm_eps"])
        self.num_layers = int(config["num_layers"])
        self.embed = ScaledPositionalEmbedding(self.hidden_size, self.max_seq_length, dropout)
        self.layers = nn.ModuleList(
            MoELayer(self.make_mamba(config), self.hidden_size, int(config["n_heads"]), dropout,
                     float(config["attn_dropout_prob"]),
                     int(config["inner_size"] or 4 * self.hidden_size), config["hidden_act"], eps,
                     bool(config["gate_causal"]))
            for _ in range(self.num_layers)
        )
        self.gate_causal = bool(config["gate_causal"])
        self.init_weights_normal(self, float(config["initializer_range"]))
        self.apply_backend()

    def non_causal_reason(self) -> str | None:
        if not self.gate_causal:
            return "gate_causal: False gates every position by the mean over the whole sequence; set gate_causal: True"
        return None

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq (batch, L) -> (batch, L, D)."""
        mask = self.padding_mask(item_seq)
        x = self.embed(self.item_embedding(item_seq))
        for layer in self.layers:
            x = layer(x, mask)
        return x

    # online state (OnlineStateMixin's encode_with_state / step_encode over self.embed and
    # self.layers): Mamba branch and gate O(1) per event, attention branch O(t) (key/value cache)
