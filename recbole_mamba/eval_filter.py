"""``eval_filter_seen``: rank only items a user has not interacted with, in full-ranking evaluation
of sequential models.

RecBole masks each user's training items out of the ranking for general (non-sequential) models,
but not for sequential ones: there every item competes, including those already in the user's
history. The published leave-one-out numbers on the S3-Rec Amazon splits and on ML-1M (S3-Rec's
and DuoRec's evaluation code, RecTools' ``filter_viewed=True`` in the eSASRec benchmark, aprec's
``FilterSeenRecommender`` in the gSASRec and BERT4Rec-replicability studies) rank unseen items
only. With ``eval_filter_seen: True`` the full-sort evaluation dataloader hands RecBole's trainer
the ``history_index`` of every item in each evaluated row's whole history (every interaction of
the user before the row's target, not only the L-window the model reads), and the trainer sets
those scores to ``-inf`` with its own code path (``Trainer._full_sort_batch_eval``). On data with
repeat consumption this makes repeats unrecommendable, as in the protocols above; the default,
``False``, is RecBole's behaviour. Sampled (``uni100`` ...) evaluation is unchanged: its
candidates are drawn from unseen items already.
"""

from __future__ import annotations

from typing import Any

import torch

_ORIGINAL: dict[str, Any] = {}


def seen_items(dataset: Any, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, item)`` index tensors of every item in the histories of ``rows`` (an
    :class:`~recbole.data.interaction.Interaction` of evaluated rows of ``dataset``).

    :class:`~recbole_mamba.data.LazySequentialDataset` gives each row's whole history; any other
    sequential dataset gives the items of the row's ``item_id_list`` window."""
    if hasattr(dataset, "seen_items"):
        return dataset.seen_items(rows)
    items = rows[dataset.item_id_list_field]
    row, col = torch.nonzero(items, as_tuple=True)
    return row, items[row, col]


def _collate_fn(self: Any, index: Any) -> tuple:
    interaction, history_index, positive_u, positive_i = _ORIGINAL["collate_fn"](self, index)
    if self.is_sequential and history_index is None and self.config["eval_filter_seen"]:
        history_index = seen_items(self._dataset, interaction)
    return interaction, history_index, positive_u, positive_i


def install() -> None:
    """Patch RecBole's ``FullSortEvalDataLoader.collate_fn`` (idempotent)."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    if "collate_fn" in _ORIGINAL:
        return
    _ORIGINAL["collate_fn"] = FullSortEvalDataLoader.collate_fn
    FullSortEvalDataLoader.collate_fn = _collate_fn


__all__ = ["install", "seen_items"]
