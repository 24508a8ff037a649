"""The all-position loss, shared by our models and the RecBole baselines we let train that way.

A row holds a window ``item_seq`` (batch, L) of a user's history, its length and the item that
follows (``POS_ITEM_ID``). Output t predicts item t+1 of the window, the last real output predicts
``POS_ITEM_ID``: every position of the window is a training target, as in SASRec's original code,
RecMamba and the original MambaRec code. The loss itself is :class:`recbole_mamba.models.losses.RecLoss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recbole_mamba.models.losses import seen_pairs


def all_positions_targets(item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                          pos_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, L) next-item targets and the (batch, L) mask of real positions."""
    batch, length = item_seq.shape
    rows = torch.arange(batch, device=item_seq.device)
    targets = torch.roll(item_seq, shifts=-1, dims=1)
    targets[rows, item_seq_len - 1] = pos_items
    real = torch.arange(length, device=item_seq.device) < item_seq_len.unsqueeze(1)
    return targets, real


def all_positions_loss(model, interaction, encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean loss over every real position of the batch.

    ``encode(item_seq, item_seq_len)`` must return (batch, L, D) outputs where position t depends
    on positions <= t only. ``model`` provides ``ITEM_SEQ``/``ITEM_SEQ_LEN``/``POS_ITEM_ID``,
    ``item_embedding`` and ``rec_loss`` (a :class:`~recbole_mamba.models.losses.RecLoss`; BPR and
    BCE draw one uniform negative per position, never the target).
    """
    item_seq = interaction[model.ITEM_SEQ]
    item_seq_len = interaction[model.ITEM_SEQ_LEN]
    hidden = encode(item_seq, item_seq_len)
    if hidden.dim() != 3 or hidden.shape[:2] != item_seq.shape:
        raise RuntimeError(f"{type(model).__name__}: all-position training needs (batch, L, D) outputs, "
                           f"got shape {tuple(hidden.shape)}")
    targets, real = all_positions_targets(item_seq, item_seq_len, interaction[model.POS_ITEM_ID])
    seen = None
    if getattr(model.rec_loss, "exclude_seen", False):
        positions = torch.full_like(item_seq, -1)
        positions[real] = torch.arange(int(real.sum()), device=item_seq.device)
        seen = seen_pairs(item_seq, positions)
    return model.rec_loss(hidden[real], targets[real], model.item_embedding.weight, seen=seen)
