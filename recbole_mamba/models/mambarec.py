"""MambaRec (original code: alokamgnaneswarasai/MambaRec), two variants chosen by ``mamba_variant``.

* ``block`` (MambaRec*, the original code's best; RecMamba is this form with hidden 64):
  x = Dropout(E[i]*sqrt(D) + P[pos]); then ``num_layers`` Mamba mixers that each replace a whole
  Transformer block. The original code applies the mixer bare (``block_residual: False``);
  ``block_residual: True`` wraps each one as LN(Dropout(Mamba(x)) + x), the form its ablation
  reports helps.
* ``attention`` (the original paper's Figure 2, also Mamba4Rec's layer): a Transformer block whose
  self-attention is Mamba: h = LN(Dropout(Mamba(x)) + x); out = LN(Dropout(FFN(h)) + h).
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_mamba.layers import Dropout, FeedForward
from recbole_mamba.layers import ScaledPositionalEmbedding
from recbole_mamba.models.base import MambaSequentialBase

VARIANTS = ("block", "attention")


class MambaLayer(nn.Module):
    """One MambaRec layer: (batch, L, D) -> (batch, L, D); see the module docstring."""

    def __init__(self, mamba: nn.Module, d_model: int, variant: str, residual: bool,
                 dropout: float, inner_size: int, hidden_act: str, eps: float) -> None:
        super().__init__()
        self.mamba = mamba
        self.variant = variant
        self.residual = residual or variant == "attention"
        self.dropout = Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=eps) if self.residual else None
        self.ffn = (FeedForward(d_model, inner_size, dropout, hidden_act, eps)
                    if variant == "attention" else None)

    def _after_mixer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            h = self.LayerNorm(self.dropout(h) + x)
        if self.ffn is not None:
            h = self.ffn(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_mixer(self.mamba(x), x)

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor):
        """(batch, L, D), lengths (batch,) -> (out, conv_state, ssm_state) at each row's end."""
        h, conv_state, ssm_state = self.mamba.forward_with_state(x, lengths)
        return self._after_mixer(h, x), conv_state, ssm_state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One position: x (batch, D) -> (batch, D); the states are updated in place."""
        h = self.mamba.step(x.unsqueeze(1), conv_state, ssm_state)[0].squeeze(1)
        return self._after_mixer(h, x)


class MambaRec(MambaSequentialBase):
    """MambaRec for RecBole. Config keys: see ``properties/model/MambaRec.yaml``."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.variant = config["mamba_variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"MambaRec: mamba_variant must be one of {VARIANTS}, got {self.variant!r}")
        self.num_layers = int(config["num_layers"])
        dropout = float(config["dropout_prob"])
        eps = float(config["layer_norm_eps"])
        self.embed = ScaledPositionalEmbedding(self.hidden_size, self.max_seq_length, dropout)
        self.layers = nn.ModuleList(
            MambaLayer(self.make_mamba(config), self.hidden_size, self.variant,
                       bool(config["block_residual"]), dropout,
                       int(config["inner_size"] or 4 * self.hidden_size), config["hidden_act"], eps)
            for _ in range(self.num_layers)
        )
        self.init_weights_normal(self, float(config["initializer_range"]))
        self.apply_backend()

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq (batch, L) -> (batch, L, D); causal, so padding never reaches real positions."""
        x = self.embed(self.item_embedding(item_seq))
        for layer in self.layers:
            x = layer(x)
        return x

    # online state: O(1) per event (one step of each mixer); positions past
    # MAX_ITEM_LIST_LENGTH reuse the last position embedding (ScaledPositionalEmbedding.step)
    def encode_with_state(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        x = self.embed(self.item_embedding(item_seq))
        tensors = {}
        for i, layer in enumerate(self.layers):
            x, tensors[f"{i}.conv"], tensors[f"{i}.ssm"] = layer.forward_with_state(x, item_seq_len)
        return x, tensors

    def step_encode(self, item_ids: torch.Tensor, count: torch.Tensor, tensors) -> torch.Tensor:
        x = self.embed.step(self.item_embedding(item_ids), count)
        for i, layer in enumerate(self.layers):
            x = layer.step(x, tensors[f"{i}.conv"], tensors[f"{i}.ssm"])
        return x
