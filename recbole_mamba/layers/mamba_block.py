"""A Mamba mixer with its residual: the stateful block that MambaRec and MLSA4Rec stack."""

from __future__ import annotations

import torch
from torch import nn

from recbole_mamba.layers.dropout import Dropout
from recbole_mamba.layers.mamba import Mamba
from recbole_mamba.layers.state import LayerState


class MambaBlock(nn.Module):
    """``LN(Dropout(Mamba(x)) + x)``, or the bare mixer ``Mamba(x)`` with ``residual=False``:
    (batch, L, D) -> (batch, L, D).

    Online state (:mod:`recbole_mamba.layers.state`): ``{"conv": (batch, d_inner, d_conv),
    "ssm": (batch, d_inner, d_state)}``, the mixer's, O(1) per event.
    """

    def __init__(self, mamba: Mamba, d_model: int, dropout: float, eps: float, residual: bool = True) -> None:
        super().__init__()
        self.mamba = mamba
        self.residual = residual
        self.dropout = Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=eps) if residual else None

    def _after_mixer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(h) + x) if self.residual else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_mixer(self.mamba(x), x)

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor,
                           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        """x (batch, L, D), lengths (batch,) -> (out (batch, L, D), {"conv", "ssm"} at each row's end)."""
        h, conv, ssm = self.mamba.forward_with_state(x, lengths)
        return self._after_mixer(h, x), {"conv": conv, "ssm": ssm}

    def step(self, x: torch.Tensor, state: LayerState, count: torch.Tensor | None = None) -> torch.Tensor:
        """One position: x (batch, D) -> (batch, D); ``state`` is updated in place."""
        h = self.mamba.step(x.unsqueeze(1), state["conv"], state["ssm"])[0].squeeze(1)
        return self._after_mixer(h, x)
