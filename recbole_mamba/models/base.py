"""What the three models share: item embedding, losses, prediction, NaN guard.

A subclass builds its encoder and implements :meth:`MambaSequentialBase.encode`; everything
RecBole calls (``forward``, ``calculate_loss``, ``predict``, ``full_sort_predict``) lives here once.
"""

from __future__ import annotations

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_mamba.data import train_mode_of
from recbole_mamba.layers import Mamba
from recbole_mamba.models.all_positions import all_positions_loss, sampled_loss

LOSS_TYPES = ("CE", "BPR", "BCE")


class MambaSequentialBase(SequentialRecommender):
    """Base for our sequential recommenders.

    Config keys read here: ``hidden_size``, ``loss_type`` (CE: softmax over all items;
    BPR: pairwise with RecBole's sampled negative; BCE: the seed's binary cross-entropy with one
    sampled negative), ``mamba_backend``, ``train_mode`` (``augment``: RecBole's one target per
    row; ``all_positions``: the loss at every position of each row, see
    :mod:`recbole_mamba.data.lazy_dataset`).
    """

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.hidden_size = int(config["hidden_size"])
        self.loss_type = config["loss_type"]
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"{type(self).__name__}: loss_type must be one of {', '.join(LOSS_TYPES)}, "
                f"got {self.loss_type!r}"
            )
        self.train_mode = train_mode_of(config)
        if (self.loss_type in ("BPR", "BCE") and self.train_mode == "augment"
                and config["train_neg_sample_args"] is None):
            raise ValueError(
                f"{type(self).__name__}: loss_type {self.loss_type} needs one sampled negative "
                "per sequence; set train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )
        self.mamba_backend = config["mamba_backend"] or "auto"
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            self.loss_fct = nn.BCEWithLogitsLoss()

    # ------------------------------------------------------------------ helpers
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
        raise TypeError(f"{type(self).__name__} must implement encode(item_seq, item_seq_len)")

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Hidden state at each sequence's last real position: (batch, D)."""
        hidden = self.encode(item_seq, item_seq_len)
        return self.gather_indexes(hidden, item_seq_len - 1)

    def causal_config_error(self) -> str | None:
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
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "CE":
            logits = seq_output @ self.item_embedding.weight.t()
            loss = self.loss_fct(logits, pos_items)
        else:
            loss = sampled_loss(self, seq_output, pos_items, interaction[self.NEG_ITEM_ID])
        self._check_finite(loss)
        return loss

    def _all_positions_loss(self, interaction) -> torch.Tensor:
        """Loss at every real position (see :func:`all_positions_loss`)."""
        why = self.causal_config_error()
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


class ScaledPositionalEmbedding(nn.Module):
    """The seed's input layer: Dropout(E[i] * sqrt(D) + P[pos]), learned positions.

    Takes the item embeddings (batch, L, D) -> (batch, L, D). Positions are 0..L-1 from the left
    (RecBole pads at the end, so real items always sit at positions 0..len-1).
    """

    def __init__(self, dim: int, max_len: int, dropout: float, scale: bool = True) -> None:
        super().__init__()
        self.position_embedding = nn.Embedding(max_len, dim)
        self.scale = math.sqrt(dim) if scale else 1.0
        self.dropout = nn.Dropout(dropout)

    def forward(self, item_emb: torch.Tensor) -> torch.Tensor:
        length = item_emb.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds MAX_ITEM_LIST_LENGTH "
                f"{self.position_embedding.num_embeddings}"
            )
        pos = torch.arange(length, device=item_emb.device)
        return self.dropout(item_emb * self.scale + self.position_embedding(pos))
