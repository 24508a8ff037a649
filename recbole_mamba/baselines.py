"""``train_mode: all_positions`` for RecBole's causal baselines (SASRec, GRU4Rec).

To compare recipes fairly, a user can train RecBole's own SASRec the way SASRec's original code
does: ``python run_recbole.py --model=SASRec --train_mode=all_positions``. Without that key (or
with ``train_mode: augment``) the baselines are RecBole's, unchanged: their dataset is
:class:`~recbole_mamba.data.LazySequentialDataset`, which yields exactly RecBole's rows (tested
against ``SequentialDataset``) with O(#interactions) memory.

Through the same wrapper they also take our sampled losses (``loss_type: SS | gBCE``, see
:mod:`recbole_mamba.models.losses`) in both training modes, so SASRec with a sampled softmax on
every position ("SASRec+SS") is ``--model=SASRec --train_mode=all_positions --loss_type=SS``.

Only causal baselines are listed: their output at position t sees positions <= t, so every
position can be trained. BERT4Rec (bidirectional) and LightSANs (its low-rank keys pool the whole
sequence) are not, and ``train_mode: all_positions`` is rejected for them.
"""

from __future__ import annotations

import functools

from recbole_mamba.data import train_mode_of
from recbole_mamba.models.all_positions import all_positions_loss
from recbole_mamba.models.losses import SHARED_NEGATIVE_LOSSES, RecLoss, train_target_counts

CAUSAL_BASELINES = ("SASRec", "GRU4Rec")


def _all_positions_encode(model):
    """``model.forward`` returning every position: its ``gather_indexes`` made the identity."""
    def encode(item_seq, item_seq_len):
        model.gather_indexes = lambda output, index: output
        try:
            return model.forward(item_seq, item_seq_len)
        finally:
            del model.gather_indexes
    return encode


def enable_all_positions(cls: type) -> type:
    """Let ``cls`` (a RecBole sequential model using ``gather_indexes``) honour ``train_mode`` and
    take ``loss_type: SS | gBCE`` besides its own CE and BPR."""
    if getattr(cls, "_recbole_mamba_all_positions", False):
        return cls
    original_init, original_loss = cls.__init__, cls.calculate_loss

    @functools.wraps(original_init)
    def __init__(self, config, dataset):
        loss_type = config["loss_type"]
        if loss_type in SHARED_NEGATIVE_LOSSES:
            config["loss_type"] = "CE"  # the class builds its CE head; our loss replaces it below
            try:
                original_init(self, config, dataset)
            finally:
                config["loss_type"] = loss_type
            self.loss_type = loss_type
        else:
            original_init(self, config, dataset)
        self.train_mode = train_mode_of(config)
        self.rec_loss = RecLoss(self.loss_type, self.n_items, config,
                                train_target_counts(dataset) if loss_type in SHARED_NEGATIVE_LOSSES else None,
                                owner=cls.__name__)

    @functools.wraps(original_loss)
    def calculate_loss(self, interaction):
        if getattr(self, "train_mode", "augment") == "all_positions":
            return all_positions_loss(self, interaction, _all_positions_encode(self))
        if self.loss_type in SHARED_NEGATIVE_LOSSES:
            seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
            return self.rec_loss(seq_output, interaction[self.POS_ITEM_ID], self.item_embedding.weight)
        return original_loss(self, interaction)

    cls.__init__, cls.calculate_loss = __init__, calculate_loss
    cls._recbole_mamba_all_positions = True
    return cls


def reject_all_positions(cls: type) -> type:
    """Make ``cls`` fail clearly when asked for ``train_mode: all_positions``."""
    if getattr(cls, "_recbole_mamba_all_positions", False):
        return cls
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, config, dataset):
        if train_mode_of(config) == "all_positions":
            raise ValueError(
                f"{cls.__name__} does not support train_mode: all_positions (it has no causal output at "
                f"every position: it encodes a sequence into one vector, or position t sees later "
                f"positions). Use train_mode: augment (RecBole's default), or one of "
                f"{', '.join(CAUSAL_BASELINES)} and our models for all-position training."
            )
        original_init(self, config, dataset)

    cls.__init__ = __init__
    cls._recbole_mamba_all_positions = True
    return cls
