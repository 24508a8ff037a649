"""A batch of users' recurrent state, for online recommendation (see ``MambaSequentialBase``'s
``init_state`` / ``update_state`` / ``score_state``).

The state of a Mamba model is a fixed-size summary of a user's whole history: per Mamba mixer a
conv window (d_inner, d_conv) and an SSM state (d_inner, d_state); MLSA4Rec adds its low-rank
attention's running sums (P x D per pooling), MoEMaTrRec a running gate mean and, for its
attention branch, a key/value cache that grows with the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class UserState:
    """Recurrent state of ``B`` users.

    Attributes:
        count: (B,) int64, events seen per user (the next event's position).
        hidden: (B, D), the model's output at each user's latest event (zeros before any event);
            ``score_state`` is ``hidden @ item_embedding.T``.
        tensors: per-layer states, every one batch-first (B, ...), named ``"<layer>.<what>"``.
    """

    count: torch.Tensor
    hidden: torch.Tensor
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.count.shape[0])

    def select(self, index: torch.Tensor | list[int] | slice) -> UserState:
        """The users at ``index`` (a new state; tensors are copied)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.count.device)
        return UserState(self.count[index].clone(), self.hidden[index].clone(),
                         {k: v[index].clone() for k, v in self.tensors.items()})

    def clone(self) -> UserState:
        """A deep copy (``update_state`` changes a state in place)."""
        return self.select(slice(None))

    def to(self, device: torch.device | str) -> UserState:
        """The same state on ``device``."""
        return UserState(self.count.to(device), self.hidden.to(device),
                         {k: v.to(device) for k, v in self.tensors.items()})

    def nbytes_per_user(self, include_cache: bool = True) -> int:
        """Bytes of state per user: fixed-size tensors plus ``hidden`` (and, with
        ``include_cache``, the key/value cache entries in use, which grow with the history)."""
        if len(self) == 0:
            return 0
        total = self.hidden[0].numel() * self.hidden.element_size() + self.count.element_size()
        used = int(self.count.max())
        for name, tensor in self.tensors.items():
            if name.endswith((".keys", ".values")):
                if include_cache:
                    total += used * tensor[0, 0].numel() * tensor.element_size()
            else:
                total += tensor[0].numel() * tensor.element_size()
        return total
