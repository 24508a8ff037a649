"""Datasets for our models: lazy history windows and all-position training."""

from recbole_mamba.data.lazy_dataset import (
    SEQ_END_FIELD,
    TRAIN_MODES,
    TRAIN_WINDOWS,
    LazySequentialDataset,
    train_mode_of,
)

__all__ = ["LazySequentialDataset", "SEQ_END_FIELD", "TRAIN_MODES", "TRAIN_WINDOWS", "train_mode_of"]
