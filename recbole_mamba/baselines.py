"""``train_mode: all_positions`` for RecBole's causal baselines (SASRec, GRU4Rec).

To compare recipes fairly, a user can train RecBole's own SASRec the way SASRec's original code
does: ``python run_recbole.py --model=SASRec --train_mode=all_positions``. Without that key (or
with ``train_mode: augment``) the baselines are RecBole's, unchanged: their dataset is
:class:`~recbole_mamba.data.LazySequentialDataset`, which yields exactly RecBole's rows (tested
against ``SequentialDataset``) with O(#interactions) memory.

Only causal baselines are listed: their output at position t sees positions <= t, so every
position can be trained. BERT4Rec (bidirectional) and LightSANs (its low-rank keys pool the whole
sequence) are not, and ``train_mode: all_positions`` is rejected for them.
"""

from __future__ import annotations

import functools

from recbole_mamba.data import train_mode_of
from recbole_mamba.models.all_positions import all_positions_loss

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
    """Let ``cls`` (a RecBole sequential model using ``gather_indexes``) honour ``train_mode``."""
    if getattr(cls, "_recbole_mamba_all_positions", False):
        return cls
    original_init, original_loss = cls.__init__, cls.calculate_loss

    @functools.wraps(original_init)
    def __init__(self, config, dataset):
        original_init(self, config, dataset)
        self.train_mode = train_mode_of(config)

    @functools.wraps(original_loss)
    def calculate_loss(self, interaction):
        if getattr(self, "train_mode", "augment") != "all_positions":
            return original_loss(self, interaction)
        return all_positions_loss(self, interaction, _all_positions_encode(self))

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
                f"{cls.__name__} is not causal (its output at position t sees later positions), so "
                f"train_mode: all_positions would train it on its own targets. Use train_mode: augment "
                f"(RecBole's default) or one of {', '.join(CAUSAL_BASELINES)}."
            )
        original_init(self, config, dataset)

    cls.__init__ = __init__
    cls._recbole_mamba_all_positions = True
    return cls
