"""Our changes to RecBole's evaluation: for full ranking of sequential models, ranking over unseen
items only (``eval_filter_seen``) and the top-k computed over chunks of the catalogue
(``eval_item_chunk``); for sampled evaluation, the same negatives on every pass.

**Unseen items only.** RecBole masks each user's training items out of the ranking for general
(non-sequential) models, but not for sequential ones: there every item competes, including those
already in the user's history. The published leave-one-out numbers on the S3-Rec Amazon splits
and on ML-1M (S3-Rec's and DuoRec's evaluation code, RecTools' ``filter_viewed=True`` in the
eSASRec benchmark, aprec's ``FilterSeenRecommender`` in the gSASRec and BERT4Rec-replicability
studies) rank unseen items only. With ``eval_filter_seen: True`` the full-sort evaluation
dataloader hands RecBole's trainer the ``history_index`` of every item in each evaluated row's
whole history (every interaction of the user before the row's target, not only the L-window the
model reads), and the trainer sets those scores to ``-inf`` with its own code path. On data with
repeat consumption this makes repeats unrecommendable, as in the protocols above; the default,
``False``, is RecBole's behaviour. Sampled (``uni100`` ...) evaluation has no such filter.

**Bounded memory.** RecBole's trainer builds a ``(users, items)`` score matrix per evaluation
batch, and its collector an integer matrix of the same shape: 80 GB each for 4,096 users over 5M
items. For models whose scores are dot products with the item embedding table (ours, SASRec,
GRU4Rec) and metrics that read only the top-k lists (Hit, NDCG, MRR, Recall, Precision, MAP),
the batch's users are encoded 2**17 positions (rows x L) at a time and its top ``max(topk)``
items are computed ``eval_item_chunk`` items at a time
(:func:`recbole_mamba.ops.topk.chunked_topk`) and handed to the collector as a
:class:`TopKScores`, never a matrix larger than ``(users, chunk)``. ``eval_item_chunk`` unset
(the default) chunks only when a batch's matrix would exceed 2**25 scores (128 MiB); below that,
RecBole's dense path runs unchanged. The metrics are RecBole's (equal to its dense path, tested).

**Sampled evaluation with the same negatives every pass.** RecBole's ``NegSampleEvalDataLoader``
(``uni100``, ``pop100``, ...) draws each batch's negatives from NumPy's global random state as
it iterates, so they depend on what training consumed before, and under DDP on each rank's seed
(``seed + local_rank``): two evaluations of one checkpoint, or a DDP run and one process, rank
against different negatives. Here every pass over such a loader draws them from NumPy's state
seeded with the config's ``seed`` and restores the previous state afterwards (training's random
stream is untouched): every epoch's validation, every model of a comparison and every rank see
the same candidates, and a DDP run's sampled metrics equal one process's (tested).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recbole_mamba.data.lazy_dataset import window_items
from recbole_mamba.ops.topk import chunk_for, chunked_topk

_ORIGINAL: dict[str, Any] = {}


# ----------------------------------------------------------------------------- unseen items only
def seen_items(dataset: Any, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, item)`` index tensors of every item in the histories of ``rows`` (an
    :class:`~recbole.data.interaction.Interaction` of evaluated rows of ``dataset``).

    :class:`~recbole_mamba.data.LazySequentialDataset` gives each row's whole history; any other
    sequential dataset gives the items of the row's ``item_id_list`` window."""
    if hasattr(dataset, "seen_items"):
        return dataset.seen_items(rows)
    return window_items(rows[dataset.item_id_list_field])


def _collate_fn(self: Any, index: Any) -> tuple:
    interaction, history_index, positive_u, positive_i = _ORIGINAL["collate_fn"](self, index)
    if self.is_sequential and history_index is None and self.config["eval_filter_seen"]:
        history_index = seen_items(self._dataset, interaction)
    return interaction, history_index, positive_u, positive_i


# ----------------------------------------------------------------------------- chunked top-k
@dataclass
class TopKScores:
    """What the trainer hands RecBole's collector instead of a score matrix: each row's top
    ``k`` items. values (B, k) descending, index (B, k) item ids; n_items the catalogue size."""

    values: torch.Tensor
    index: torch.Tensor
    n_items: int

    def __len__(self) -> int:
        return self.values.shape[0]


#: positions (rows x L) encoded at once by the chunked path (activations ~1-4 KB per position)
MAX_POSITIONS = 1 << 17


def dot_product_vectors(model: Any, interaction: Any, max_positions: int = MAX_POSITIONS
                        ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(users (B, D), items (N, D))`` whose product is ``model.full_sort_predict(interaction)``,
    for the models whose scores are that product (in eval mode); ``None`` for any other model.
    The users are encoded ``max_positions // L`` rows at a time."""
    from recbole.model.sequential_recommender import GRU4Rec, SASRec

    from recbole_mamba.models.base import MambaSequentialBase

    cls = type(model)
    ours = isinstance(model, MambaSequentialBase) and cls.full_sort_predict is MambaSequentialBase.full_sort_predict
    theirs = any(isinstance(model, base) and cls.full_sort_predict is base.full_sort_predict
                 for base in (SASRec, GRU4Rec))
    if not (ours or theirs):
        return None
    seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    # rows are independent in eval mode: encode at most max_positions (rows x L) at a time, so
    # the encoder's activations stay bounded whatever eval_batch_size is
    step = max(1, max_positions // max(1, seq.shape[1]))
    users = torch.cat([model.forward(seq[i:i + step], lengths[i:i + step]) for i in range(0, len(seq), step)])
    return users, model.item_embedding.weight


def _topk_only(collector: Any) -> bool:
    need = collector.register.need
    return not any(need(key) for key in ("rec.meanrank", "rec.score", "data.label"))


def _full_sort_batch_eval(self: Any, batched_data: tuple) -> tuple:
    from recbole.utils import EvaluatorType

    interaction, history_index, positive_u, positive_i = batched_data
    n_items = self.tot_item_num
    chunk = self.config["eval_item_chunk"] or chunk_for(len(interaction))
    if chunk >= n_items or self.config["eval_type"] != EvaluatorType.RANKING or not _topk_only(self.eval_collector):
        return _ORIGINAL["_full_sort_batch_eval"](self, batched_data)
    interaction = interaction.to(self.device)
    vectors = dot_product_vectors(self.model, interaction)
    if vectors is None:
        return _ORIGINAL["_full_sort_batch_eval"](self, batched_data)
    users, items = vectors
    values, index = chunked_topk(users, items[:n_items], max(self.config["topk"]), chunk,
                                 exclude=history_index,
                                 exclude_items=torch.zeros(1, dtype=torch.long, device=users.device))
    return interaction, TopKScores(values, index, n_items), positive_u, positive_i


def _eval_batch_collect(self: Any, scores_tensor: Any, interaction: Any, positive_u: torch.Tensor,
                        positive_i: torch.Tensor) -> None:
    if not isinstance(scores_tensor, TopKScores):
        return _ORIGINAL["eval_batch_collect"](self, scores_tensor, interaction, positive_u, positive_i)
    index = scores_tensor.index
    if self.register.need("rec.items"):
        self.data_struct.update_tensor("rec.items", index)
    if self.register.need("rec.topk"):
        n, n_items = index.shape[0], scores_tensor.n_items
        positives = torch.unique(positive_u.to(index.device) * n_items + positive_i.to(index.device))
        pos_idx = torch.isin(torch.arange(n, device=index.device).unsqueeze(1) * n_items + index, positives)
        pos_len = torch.bincount(positives // n_items, minlength=n).unsqueeze(1)
        self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx.int(), pos_len.int()), dim=1))


# ----------------------------------------------------------------------------- fixed negatives
def _seeded_iter(self: Any):
    """``NegSampleEvalDataLoader.__iter__``: the batches of one pass, their negatives drawn from
    NumPy's global state seeded with ``config['seed']``; the caller's state is restored after."""
    state = np.random.get_state()
    np.random.seed(int(self.config["seed"]) % 2**32)
    try:
        yield from _ORIGINAL["neg_eval_iter"](self)
    finally:
        np.random.set_state(state)


def install() -> None:
    """Patch RecBole's ``FullSortEvalDataLoader.collate_fn``, ``Trainer._full_sort_batch_eval``,
    ``Collector.eval_batch_collect`` and ``NegSampleEvalDataLoader.__iter__`` (idempotent)."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader
    from recbole.evaluator.collector import Collector
    from recbole.trainer.trainer import Trainer

    if _ORIGINAL:
        return
    _ORIGINAL["collate_fn"] = FullSortEvalDataLoader.collate_fn
    _ORIGINAL["_full_sort_batch_eval"] = Trainer._full_sort_batch_eval
    _ORIGINAL["eval_batch_collect"] = Collector.eval_batch_collect
    _ORIGINAL["neg_eval_iter"] = NegSampleEvalDataLoader.__iter__
    # RecBole pickles dataloaders (save_dataloaders) with their bound collate_fn, found again by
    # name on load: keep RecBole's name and qualified name
    functools.update_wrapper(_collate_fn, _ORIGINAL["collate_fn"])
    FullSortEvalDataLoader.collate_fn = _collate_fn
    Trainer._full_sort_batch_eval = _full_sort_batch_eval
    Collector.eval_batch_collect = _eval_batch_collect
    functools.update_wrapper(_seeded_iter, _ORIGINAL["neg_eval_iter"])
    NegSampleEvalDataLoader.__iter__ = _seeded_iter


__all__ = ["install", "seen_items", "dot_product_vectors", "TopKScores"]
