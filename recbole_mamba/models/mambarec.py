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

from recbole_mamba.layers import FeedForward, MambaBlock, ScaledPositionalEmbedding
from recbole_mamba.models.base import MambaSequentialBase, resolve_dropout

VARIANTS = ("block", "attention")


class MambaLayer(MambaBlock):
    """One MambaRec layer: (batch, L, D) -> (batch, L, D); see the module docstring. The
    ``attention`` variant adds the FFN after the mixer's residual; the state is the block's."""

    def __init__(self, mamba: nn.Module, d_model: int, variant: str, residual: bool,
                 dropout: float, inner_size: int, hidden_act: str, eps: float) -> None:
        super().__init__(mamba, d_model, dropout, eps, residual=residual or variant == "attention")
        self.variant = variant
        self.ffn = (FeedForward(d_model, inner_size, dropout, hidden_act, eps)
                    if variant == "attention" else None)

    def _after_mixer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = super()._after_mixer(h, x)
        return self.ffn(h) if self.ffn is not None else h


class MambaRec(MambaSequentialBase):
    """MambaRec for RecBole. Config keys: see ``properties/model/MambaRec.yaml``."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.variant = config["mamba_variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"MambaRec: mamba_variant must be one of {VARIANTS}, got {self.variant!r}")
        self.num_layers = int(config["num_layers"])
        dropout = resolve_dropout(config["dropout_prob"], dataset, "MambaRec")
        self.dropout_prob = dropout
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

    # online state (OnlineStateMixin's encode_with_state / step_encode over self.embed and
    # self.layers): O(1) per event, one step of each mixer
