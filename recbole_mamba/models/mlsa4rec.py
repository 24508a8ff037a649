"""MLSA4Rec (arXiv 2407.13135; authors' code Sujz13/MLSA4Rec): Mamba + low-rank self-attention.

::

    x   = LN(Dropout(E[i]))                               # no positional embedding
    H_m = LN1(Dropout(Mamba(x)) + x)                      # Mamba-LSA interaction layer (one)
    H_a = LSA(H_m)                                        # recbole_mamba.layers.lsa
    H_g = LN2(GELU(W1 H_a) * H_m)                         # gated information transmission
    H   = LN3(Dropout(GELU(W2 [H_a ; H_g])) + GELU(W3 x))
    H   = LN(Dropout(Mamba(H)) + H), num_layers times     # Mamba normalisation layers

Weights: normal(0, initializer_range) outside Mamba by default (``init_style: normal``); the
authors' init is ``init_style: authors`` (Kaiming-uniform on every Linear and Embedding, Mamba's
included, zero biases). ``lsa_causal: True`` (default) pools
positions <= t only; the authors' form is ``lsa_causal: False`` (their last position sees
padding) with ``lsa_softmax_over: positions`` (their ``Softmax(dim=-2)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recbole_mamba.layers import (Dropout, LowRankSelfAttention, MambaBlock, SubState, prefixed, stack_step,
                                  stack_with_state)
from recbole_mamba.models.base import MambaSequentialBase, resolve_dropout


class MambaLSAInteraction(nn.Module):
    """The Mamba-LSA interaction layer: x (batch, L, D), mask (batch, L) -> (batch, L, D)."""

    def __init__(self, mamba: nn.Module, d_model: int, n_heads: int, k_interests: int,
                 dropout: float, attn_dropout: float, eps: float, causal: bool,
                 softmax_over: str) -> None:
        super().__init__()
        self.mamba_layer = MambaBlock(mamba, d_model, dropout, eps)
        self.lsa = LowRankSelfAttention(d_model, n_heads, k_interests, dropout, attn_dropout, eps,
                                        causal=causal, softmax_over=softmax_over)
        self.mlp1 = nn.Linear(d_model, d_model)
        self.mlp2 = nn.Linear(2 * d_model, d_model)
        self.mlp3 = nn.Linear(d_model, d_model)
        self.act = nn.GELU()
        self.dropout = Dropout(dropout)
        self.LayerNorm2 = nn.LayerNorm(d_model, eps=eps)
        self.LayerNorm3 = nn.LayerNorm(d_model, eps=eps)

    def _fuse(self, x: torch.Tensor, h_m: torch.Tensor, h_a: torch.Tensor) -> torch.Tensor:
        h_g = self.LayerNorm2(self.act(self.mlp1(h_a)) * h_m)
        fused = self.act(self.mlp2(torch.cat([h_a, h_g], dim=-1)))
        return self.LayerNorm3(self.dropout(fused) + self.act(self.mlp3(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h_m = self.mamba_layer(x)
        return self._fuse(x, h_m, self.lsa(h_m, mask))

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor):
        """Causal LSA only: (batch, L, D) -> (out, state): the Mamba block's conv and ssm and
        the LSA's six running sums, side by side (their names do not overlap)."""
        h_m, mamba_state = self.mamba_layer.forward_with_state(x, lengths, mask)
        h_a, lsa_state = self.lsa.forward_with_state(h_m, lengths, mask)
        return self._fuse(x, h_m, h_a), {**mamba_state, **lsa_state}

    def step(self, x: torch.Tensor, state, count: torch.Tensor | None = None) -> torch.Tensor:
        """One position: x (batch, D) -> (batch, D), ``state`` updated in place; O(P * D) for the LSA."""
        h_m = self.mamba_layer.step(x, state, count)
        return self._fuse(x, h_m, self.lsa.step(h_m, state, count))


class MLSA4Rec(MambaSequentialBase):
    """MLSA4Rec for RecBole. Config keys: see ``properties/model/MLSA4Rec.yaml``."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        dropout = resolve_dropout(config["dropout_prob"], dataset, "MLSA4Rec")
        eps = float(config["layer_norm_eps"])
        self.num_layers = int(config["num_layers"])
        self.lsa_causal = bool(config["lsa_causal"])
        self.mask_padding = bool(config["lsa_mask_padding"]) or self.lsa_causal
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.dropout = Dropout(dropout)
        self.interaction = MambaLSAInteraction(
            self.make_mamba(config), self.hidden_size, int(config["n_heads"]),
            int(config["k_interests"]), dropout, float(config["attn_dropout_prob"]), eps,
            self.lsa_causal, config["lsa_softmax_over"],
        )
        self.mamba_layers = nn.ModuleList(
            MambaBlock(self.make_mamba(config), self.hidden_size, dropout, eps)
            for _ in range(self.num_layers)
        )
        init_style = config["init_style"]
        if init_style == "authors":
            self.apply(self._authors_init)
            self._reset_embedding_padding()
        elif init_style == "normal":
            self.init_weights_normal(self, float(config["initializer_range"]))
        else:
            raise ValueError(f"MLSA4Rec: init_style must be 'authors' or 'normal', got {init_style!r}")
        self.apply_backend()

    def non_causal_reason(self) -> str | None:
        if not self.lsa_causal:
            return "lsa_causal: False pools the latent interests over the whole sequence; set lsa_causal: True"
        return None

    @staticmethod
    def _authors_init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq (batch, L) -> (batch, L, D)."""
        mask = self.padding_mask(item_seq) if self.mask_padding else None
        x = self.LayerNorm(self.dropout(self.item_embedding(item_seq)))
        x = self.interaction(x, mask)
        for layer in self.mamba_layers:
            x = layer(x)
        return x

    # online state (causal LSA only): every part O(1) in the history length; the LSA's
    # running sums cost O(P * D) per event. No position embedding, so no length limit.
    def encode_with_state(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        mask = self.padding_mask(item_seq)
        x = self.LayerNorm(self.dropout(self.item_embedding(item_seq)))
        x, interaction = self.interaction.forward_with_state(x, item_seq_len, mask)
        x, tensors = stack_with_state(self.mamba_layers, x, item_seq_len, mask)
        return x, {**prefixed("interaction.", interaction), **tensors}

    def step_encode(self, item_ids: torch.Tensor, count: torch.Tensor, tensors) -> torch.Tensor:
        x = self.LayerNorm(self.dropout(self.item_embedding(item_ids)))
        x = self.interaction.step(x, SubState(tensors, "interaction."), count)
        return stack_step(self.mamba_layers, x, tensors, count)
