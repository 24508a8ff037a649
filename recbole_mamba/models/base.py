"""What the three models share: item embedding, losses, prediction, NaN guard (and, from
:class:`~recbole_mamba.models.online.OnlineStateMixin`, the online-state API).

A subclass builds its encoder and implements :meth:`MambaSequentialBase.encode`; everything
RecBole calls (``forward``, ``calculate_loss``, ``predict``, ``full_sort_predict``) lives here once.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_mamba.data import train_mode_of
from recbole_mamba.layers import Mamba, set_backend
from recbole_mamba.models.all_positions import all_positions_loss
from recbole_mamba.models.losses import (
    PAIRWISE_LOSSES,
    SHARED_NEGATIVE_LOSSES,
    RecLoss,
    sparse_embedding_wanted,
    train_target_counts,
)
from recbole_mamba.models.online import OnlineStateMixin


#: ``dropout_prob: auto``: (mean interactions per user below which, dropout there; dropout above).
#: Measured with MambaRec (docs/quality.md): on the Amazon Toys and Sports files (~8.5 per user)
#: validation NDCG@10 0.0754 / 0.0395 at 0.4 against 0.0741 / 0.0383 at 0.2; on the ML-1M ratings
#: half (~163 per user) 0.2163 at epoch 20 at 0.4 against 0.2329 at epoch 20 at 0.2.
AUTO_DROPOUT = (40.0, 0.4, 0.2)


def resolve_dropout(value: float | str, dataset: Any, owner: str) -> float:
    """``dropout_prob`` as a number: ``auto`` picks it from the data's mean interactions per user
    (:data:`AUTO_DROPOUT`: short histories, where each user's few events are easy to memorise,
    get more dropout); a number is used as it is. The choice is logged."""
    if value != "auto":
        return float(value)
    # RecBole builds the model from the training split, whose rows are targets or (all positions)
    # one window per user: the lazy dataset counts the data set's interactions themselves
    total = getattr(dataset, "interaction_count", None) or dataset.inter_num
    per_user = total / max(1, dataset.user_num - 1)
    threshold, short, long = AUTO_DROPOUT
    chosen = short if per_user < threshold else long
    logging.getLogger(__name__).info(
        "%s: dropout_prob auto -> %s (%.1f interactions per user, %s %g)", owner, chosen, per_user,
        "below" if per_user < threshold else "at least", threshold)
    return chosen


class MambaSequentialBase(OnlineStateMixin, SequentialRecommender):
    """Base for our sequential recommenders.

    Config keys read here: ``hidden_size``, ``loss_type`` (CE | BPR | BCE | SS | gBCE and their
    keys, see :mod:`recbole_mamba.models.losses`), ``mamba_backend``, ``train_mode`` (``augment``: RecBole's one target per
    row; ``all_positions``: the loss at every position of each row, see
    :mod:`recbole_mamba.data.lazy_dataset`).
    """

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.hidden_size = int(config["hidden_size"])
        self.loss_type = config["loss_type"]
        counts = train_target_counts(dataset) if self.loss_type in SHARED_NEGATIVE_LOSSES else None
        #: built with sparse=True (see recbole_mamba.models.losses.sparse_embedding_wanted)
        self.sparse_item_embedding = sparse_embedding_wanted(config, self.n_items, self.loss_type, type(self).__name__)
        self.rec_loss = RecLoss(self.loss_type, self.n_items, config, counts, owner=type(self).__name__,
                                sparse=self.sparse_item_embedding)
        self.train_mode = train_mode_of(config)
        if (self.loss_type in PAIRWISE_LOSSES and self.train_mode == "augment"
                and config["train_neg_sample_args"] is None):
            raise ValueError(
                f"{type(self).__name__}: loss_type {self.loss_type} needs one sampled negative "
                "per sequence; set train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )
        self.mamba_backend = config["mamba_backend"] or "auto"
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0,
                                           sparse=self.sparse_item_embedding)

    # ------------------------------------------------------------------ helpers
    def apply_backend(self) -> None:
        """Give every layer of this model its ``mamba_backend`` (:func:`recbole_mamba.layers.set_backend`):
        the one decision behind every op, so ``reference`` runs no custom kernel anywhere. Each
        model calls it last in ``__init__``."""
        set_backend(self, self.mamba_backend)

    def make_mamba(self, config) -> Mamba:
        """A Mamba mixer from the config keys d_state, d_conv, expand."""
        return Mamba(
            d_model=self.hidden_size,
            d_state=int(config["d_state"]),
            d_conv=int(config["d_conv"]),
            expand=int(config["expand"]),
            backend=self.mamba_backend,
        )

    def init_weights_normal(self, module: nn.Module, std: float) -> None:
        """SASRec-style init (normal(0, std) Linear/Embedding, LayerNorm 1/0), leaving the
        Mamba mixers with their own (mamba-ssm) initialisation."""
        for m in module.modules():
            if isinstance(m, Mamba):
                continue
            for child in m.children():
                if isinstance(child, Mamba):
                    continue
                if isinstance(child, (nn.Linear, nn.Embedding)):
                    child.weight.data.normal_(0.0, std)
                    if isinstance(child, nn.Linear) and child.bias is not None:
                        child.bias.data.zero_()
                elif isinstance(child, nn.LayerNorm):
                    child.weight.data.fill_(1.0)
                    child.bias.data.zero_()
        self._reset_embedding_padding()

    def _reset_embedding_padding(self) -> None:
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    @staticmethod
    def padding_mask(item_seq: torch.Tensor) -> torch.Tensor:
        """(batch, L) True at real (non-padding) positions."""
        return item_seq > 0

    # ------------------------------------------------------------------ model API
    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """item_seq (batch, L) item ids, right-padded with 0 -> hidden states (batch, L, D)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode(item_seq, item_seq_len)")

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Hidden state at each sequence's last real position: (batch, D)."""
        hidden = self.encode(item_seq, item_seq_len)
        return self.gather_indexes(hidden, item_seq_len - 1)

    def non_causal_reason(self) -> str | None:
        """Why this configuration lets position t see later positions (None when it does not).

        All-position training needs every output to depend only on positions <= t.
        """
        return None

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.train_mode == "all_positions":
            return self._all_positions_loss(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        neg = interaction[self.NEG_ITEM_ID] if self.loss_type in PAIRWISE_LOSSES else None
        seen = None
        if self.rec_loss.exclude_seen:  # the row's whole window is the target's history
            rows, cols = torch.nonzero(item_seq > 0, as_tuple=True)
            seen = (rows, item_seq[rows, cols])
        loss = self.rec_loss(seq_output, interaction[self.POS_ITEM_ID], self.item_embedding.weight, neg, seen)
        self._check_finite(loss)
        return loss

    def _all_positions_loss(self, interaction) -> torch.Tensor:
        """Loss at every real position (see :func:`all_positions_loss`)."""
        why = self.non_causal_reason()
        if why is not None:
            raise ValueError(f"{type(self).__name__}: train_mode all_positions needs a causal model: {why}")
        loss = all_positions_loss(self, interaction, self.encode)
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"{type(self).__name__}: the training loss is {loss.item()} (not finite). "
                "Lower learning_rate, check the data for invalid ids, or try mamba_backend: "
                "reference to rule out the kernel."
            )

    def predict(self, interaction) -> torch.Tensor:
        """Scores of the candidate items in ``interaction[ITEM_ID]``: (batch,)."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        test_item_emb = self.item_embedding(interaction[self.ITEM_ID])
        return (seq_output * test_item_emb).sum(-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores of all items: (batch, n_items)."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.t()
