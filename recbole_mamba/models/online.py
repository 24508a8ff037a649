"""The online-state API of our models: a user's history as the layers' recurrent state.

``init_state`` builds it from a history with one full forward pass, ``update_state`` appends one
event per user through every layer's ``step`` (:mod:`recbole_mamba.layers.state`), and
``score_state`` scores all items, equal to ``full_sort_predict`` after the same history. A model
provides ``encode_with_state`` and ``step_encode``; everything else is here once. A model built
as ``self.embed`` (a :class:`~recbole_mamba.layers.ScaledPositionalEmbedding` over the item
embedding) followed by ``self.layers`` (stateful layers, :mod:`recbole_mamba.layers.state`), as
MambaRec and MoEMaTrRec are, inherits both from here.
"""

from __future__ import annotations

import torch

from recbole_mamba.layers import stack_step, stack_with_state
from recbole_mamba.models.state import UserState


class OnlineStateMixin:
    """Mixed into :class:`~recbole_mamba.models.base.MambaSequentialBase` (which provides
    ``item_embedding``, ``n_items``, ``max_seq_length``, ``gather_indexes`` and
    ``non_causal_reason``)."""

    INIT_STATE_POSITIONS = 32_768
    """init_state runs the full forward on about this many positions (users x L) at a time."""

    # encode_with_state and step_encode for an embed -> layers model (MambaRec, MoEMaTrRec); a
    # model of another shape (MLSA4Rec) overrides both. The public API is below.
    def encode_with_state(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like :meth:`encode`, plus every layer's state at each row's last real position:
        item_seq (batch, L), item_seq_len (batch,) -> (hidden (batch, L, D), {name: (batch, ...)})."""
        if not (hasattr(self, "embed") and hasattr(self, "layers")):
            raise TypeError(f"{type(self).__name__} does not support online state")
        x = self.embed(self.item_embedding(item_seq))
        return stack_with_state(self.layers, x, item_seq_len, self.padding_mask(item_seq))

    def step_encode(self, item_ids: torch.Tensor, count: torch.Tensor,
                    tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """One new item per row at position ``count`` -> the output there (batch, D);
        updates ``tensors`` in place. Positions past MAX_ITEM_LIST_LENGTH reuse the last position
        embedding (:meth:`ScaledPositionalEmbedding.step`)."""
        if not (hasattr(self, "embed") and hasattr(self, "layers")):
            raise TypeError(f"{type(self).__name__} does not support online state")
        x = self.embed.step(self.item_embedding(item_ids), count)
        return stack_step(self.layers, x, tensors, count)

    def _check_streaming(self) -> None:
        if self.training:
            raise RuntimeError(
                f"{type(self).__name__}: online state is for inference; call model.eval() first "
                "(dropout would make the state random)"
            )
        why = self.non_causal_reason()
        if why is not None:
            raise ValueError(
                f"{type(self).__name__}: this configuration cannot be updated event by event, since "
                f"a new event would change earlier positions: {why}"
            )

    def _check_items(self, item_ids: torch.Tensor) -> None:
        if item_ids.numel() and (int(item_ids.min()) < 1 or int(item_ids.max()) >= self.n_items):
            raise ValueError(
                f"{type(self).__name__}: item ids must be internal ids in [1, {self.n_items - 1}] "
                f"(0 is padding); got values in [{int(item_ids.min())}, {int(item_ids.max())}]. "
                "Map original tokens with dataset.token2id(dataset.iid_field, tokens)."
            )

    @torch.no_grad()
    def init_state(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> UserState:
        """The state after each user's history, from one full forward pass.

        item_seq (batch, L) internal item ids, right-padded with 0 (RecBole's layout);
        item_seq_len (batch,) real lengths (0 allowed: an empty history). The model must be in
        eval mode. ``score_state`` of the result equals ``full_sort_predict`` on the same rows.
        """
        self._check_streaming()
        if item_seq.dim() != 2 or item_seq_len.shape != item_seq.shape[:1]:
            raise ValueError(
                f"init_state expects item_seq (batch, L) and item_seq_len (batch,), got "
                f"{tuple(item_seq.shape)} and {tuple(item_seq_len.shape)}"
            )
        if item_seq.shape[1] > self.max_seq_length:
            raise ValueError(
                f"init_state: history length {item_seq.shape[1]} exceeds MAX_ITEM_LIST_LENGTH "
                f"{self.max_seq_length}; pass the last {self.max_seq_length} items and continue "
                "with update_state"
            )
        lengths = item_seq_len.long()
        # users in chunks of about INIT_STATE_POSITIONS positions: the full forward's activations
        # (MLSA4Rec's causal pooling is (rows, L, P, D)) stay bounded for any batch and length
        rows = max(1, self.INIT_STATE_POSITIONS // max(1, item_seq.shape[1]))
        lasts, parts = [], []
        for lo in range(0, item_seq.shape[0], rows):
            chunk_len = lengths[lo : lo + rows]
            hidden, tensors = self.encode_with_state(item_seq[lo : lo + rows], chunk_len)
            last = self.gather_indexes(hidden, (chunk_len - 1).clamp_min(0))
            lasts.append(last * (chunk_len > 0).unsqueeze(-1).to(last.dtype))
            parts.append(tensors)
        tensors = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return UserState(lengths.clone(), torch.cat(lasts), tensors)

    def empty_state(self, batch_size: int) -> UserState:
        """The state of ``batch_size`` users with no history yet."""
        device = self.item_embedding.weight.device
        return self.init_state(torch.zeros(batch_size, 1, dtype=torch.long, device=device),
                               torch.zeros(batch_size, dtype=torch.long, device=device))

    @torch.no_grad()
    def update_state(self, state: UserState, item_ids: torch.Tensor) -> UserState:
        """Append one event per user: item_ids (batch,) internal ids. Updates ``state`` in place
        (``state.clone()`` keeps the old one) and returns it. Cost per event: O(1) in the history
        length for the Mamba parts; see each model for the rest."""
        self._check_streaming()
        item_ids = torch.as_tensor(item_ids, dtype=torch.long, device=state.count.device).view(-1)
        if item_ids.shape[0] != len(state):
            raise ValueError(f"update_state: {item_ids.shape[0]} item ids for a state of {len(state)} users")
        self._check_items(item_ids)
        state.hidden = self.step_encode(item_ids, state.count, state.tensors)
        state.count += 1
        return state

    @torch.no_grad()
    def score_state(self, state: UserState) -> torch.Tensor:
        """Scores of all items for each user of ``state``: (batch, n_items), as
        ``full_sort_predict`` gives them after the same history."""
        if bool((state.count == 0).any()):
            raise ValueError("score_state: some users have no events yet; update_state them first")
        return state.hidden @ self.item_embedding.weight.t()
