"""Datasets for our models: lazy history windows and all-position training."""

from recbole_mamba.data.lazy_dataset import (
    SEQ_END_FIELD,
    TRAIN_BATCH_UNITS,
    TRAIN_MODES,
    TRAIN_WINDOWS,
    LazySequentialDataset,
    rows_per_batch,
    train_mode_of,
)

__all__ = ["LazySequentialDataset", "SEQ_END_FIELD", "TRAIN_BATCH_UNITS", "TRAIN_MODES", "TRAIN_WINDOWS",
           "rows_per_batch", "train_mode_of"]
