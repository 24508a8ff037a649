"""A RecBole sequential dataset that cuts history windows on the fly, and all-position training.

RecBole's :class:`~recbole.data.dataset.SequentialDataset` materialises every prefix of every
user as a row of ``item_id_list`` (and of every other ``<field>_list``): (#interactions - #users)
x MAX_ITEM_LIST_LENGTH values per field, 2.2 GiB for ML-1M at L=200 and ~56 GiB at L=5000.
:class:`LazySequentialDataset` keeps each field once, as one flat array sorted by (user, time),
and each row only as ``(end, length)`` into it; ``__getitem__`` (which every RecBole dataloader
calls for a batch) gathers the ``(batch, L)`` windows. Memory is O(#interactions), whatever L.
Rows, order, split and evaluation are exactly RecBole's: the same targets with the same
histories come out, so ``train_mode: augment`` gives RecBole's own training set.

``train_mode: all_positions`` replaces the training split by one sequence per user (the train
part of leave-one-out), cut into non-overlapping windows of L targets (``train_windows: all``, the
default, so every training target is predicted exactly once) or only the most recent window
(``train_windows: last``, SASRec's original code). The model then computes its loss at every
position (see ``MambaSequentialBase.calculate_loss``). Validation and test are untouched.

**Batch size in all-position mode.** ``train_batch_size`` counts training targets in both modes
(``train_batch_unit: targets``, the default): an augmented row is one target, an all-position
window holds up to L targets, so a batch takes ``round(train_batch_size / targets_per_row)``
windows, ``targets_per_row`` being the split's mean window length. An epoch then makes about
as many optimizer steps (#targets / train_batch_size) in either mode, on short and long histories
alike. ``train_batch_unit: sequences`` counts windows instead (the research repos' convention).
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils.enum_type import FeatureSource, FeatureType

TRAIN_MODES = ("augment", "all_positions")
TRAIN_WINDOWS = ("all", "last")
TRAIN_BATCH_UNITS = ("targets", "sequences")
#: Row field holding the flat index of the row's target (its history ends just before it).
SEQ_END_FIELD = "seq_end_index"


def train_mode_of(config) -> str:
    """``config['train_mode']`` validated (default ``augment``)."""
    mode = config["train_mode"] or "augment"
    if mode not in TRAIN_MODES:
        raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {mode!r}")
    return mode


class LazySequentialDataset(SequentialDataset):
    """RecBole ``SequentialDataset`` with O(#interactions) memory (see the module docstring).

    Extra config keys: ``train_mode`` (augment | all_positions), ``train_windows`` (all | last).
    """

    def __init__(self, config) -> None:
        self.train_mode = train_mode_of(config)
        self.train_windows = config["train_windows"] or "all"
        if self.train_windows not in TRAIN_WINDOWS:
            raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {self.train_windows!r}")
        self.train_batch_unit = config["train_batch_unit"] or "targets"
        if self.train_batch_unit not in TRAIN_BATCH_UNITS:
            raise ValueError(f"train_batch_unit must be one of {TRAIN_BATCH_UNITS}, got {self.train_batch_unit!r}")
        #: mean training targets per row of this split when train_batch_size counts targets and
        #: a row holds several (all-position windows); None otherwise. Read by the train loader.
        self.targets_per_row: float | None = None
        #: counts (n_items,) of each item among the training targets, set on the all-position
        #: training split (whose rows are windows, not targets); None where the rows are the
        #: targets themselves (see recbole_mamba.models.losses.train_target_counts)
        self.train_target_counts: np.ndarray | None = None
        # Benchmark files carry precomputed item lists: then this is RecBole's class, unchanged.
        self._lazy = config["benchmark_filename"] is None
        if not self._lazy and self.train_mode == "all_positions":
            raise ValueError("train_mode all_positions builds windows from the interactions; it cannot "
                             "be used with benchmark_filename (precomputed item lists)")
        super().__init__(config)

    @property
    def interaction_count(self) -> int:
        """Interactions of the whole data set, every split included, whichever split or training
        mode this object holds (its rows are targets or all-position windows, not interactions)."""
        first = getattr(self, "_user_first", None)  # set over all interactions, before the split
        return len(first) if first is not None else self.inter_num

    # ------------------------------------------------------------------ building
    def data_augmentation(self) -> None:
        """Index every (user, target) row like RecBole's augmentation, without copying histories."""
        self.logger.debug("lazy data_augmentation")
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.set_field_property(SEQ_END_FIELD, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        uid = self.inter_feat[self.uid_field].numpy()
        n = len(uid)
        first = np.ones(n, dtype=bool)
        first[1:] = uid[1:] != uid[:-1]
        # flat index of each interaction's user's first interaction
        self._user_first = np.maximum.accumulate(np.where(first, np.arange(n), 0)).astype(np.int64)
        self._flat = {f: self.inter_feat[f] for f in self.inter_feat if f != self.uid_field}
        target = np.flatnonzero(~first)
        start = np.maximum(self._user_first[target], target - self.max_item_list_len)
        rows = self.inter_feat[torch.from_numpy(target)]
        rows.update(Interaction({
            self.item_list_length_field: torch.from_numpy(target - start),
            SEQ_END_FIELD: torch.from_numpy(target),
        }))
        self.inter_feat = rows

    def build(self) -> list:
        datasets = super().build()
        if self.train_mode == "all_positions":
            datasets[0] = self._all_positions(datasets[0])
        return datasets


    def _all_positions(self, train: "LazySequentialDataset") -> "LazySequentialDataset":
        """One row per window of each user's training sequence (see the module docstring)."""
        feat = train.inter_feat
        uid = feat[self.uid_field].numpy()
        end = feat[SEQ_END_FIELD].numpy()
        if len(end) == 0:
            return train
        order = np.lexsort((end, uid))
        last = order[np.r_[uid[order][1:] != uid[order][:-1], True]]  # each user's last train target
        item_counts = np.bincount(feat[self.iid_field].numpy(), minlength=self.item_num)
        ends, users = end[last], uid[last]
        L = self.max_item_list_len
        firsts = self._user_first[ends]
        if self.train_windows == "all":
            counts = (ends - firsts + L - 1) // L  # windows of L targets covering firsts+1 .. end
            rep = np.repeat(np.arange(len(ends)), counts)
            k = np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts)
            ends, users, firsts = ends[rep] - k * L, users[rep], firsts[rep]
        lengths = ends - np.maximum(firsts, ends - L)
        t = torch.from_numpy(ends)
        fields = {f: flat[t] for f, flat in self._flat.items()}
        fields[self.uid_field] = torch.from_numpy(users)
        fields[self.item_list_length_field] = torch.from_numpy(lengths)
        fields[SEQ_END_FIELD] = t
        new = train.copy(Interaction(fields))
        new.train_target_counts = item_counts
        n_targets = int(lengths.sum())
        if self.train_batch_unit == "targets":
            new.targets_per_row = n_targets / len(ends)
        self.logger.info(
            f"train_mode all_positions: {len(feat)} training targets -> {len(ends)} sequences "
            f"of <= {L} positions ({self.train_windows} windows, {n_targets} targets, "
            f"{n_targets / len(ends):.1f} per sequence; train_batch_size counts {self.train_batch_unit})"
        )
        return new

    # ------------------------------------------------------------------ reading
    def _windows(self, rows: Interaction) -> Interaction:
        """Add ``<field>_list`` (batch, L, ...) to ``rows``, gathered from the flat arrays."""
        end = rows[SEQ_END_FIELD]
        length = rows[self.item_list_length_field]
        pos = torch.arange(self.max_item_list_len)
        idx = end.unsqueeze(-1) - length.unsqueeze(-1) + pos
        valid = pos < length.unsqueeze(-1)
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        lists = {}
        for field, flat in self._flat.items():
            values = flat[idx]
            mask = valid.reshape(valid.shape + (1,) * (values.dim() - valid.dim()))
            lists[getattr(self, f"{field}_list_field")] = values * mask.to(values.dtype)
        rows.update(Interaction(lists))
        return rows

    def __getitem__(self, index, join: bool = True) -> Interaction:
        if not self._lazy:
            return super().__getitem__(index, join)
        rows = self._windows(self.inter_feat[index])
        return self.join(rows) if join else rows

    def seen_items(self, rows: Interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item of each row's whole history (all its user's interactions before its target,
        not only the L-window the model reads), as ``(row, item)`` index tensors of equal length
        (``sum`` of the rows' history lengths): ``scores[row, item]`` addresses each seen item
        of a ``(len(rows), n_items)`` score matrix. Falls back to the rows' ``item_id_list``
        windows for RecBole's precomputed-list files (``benchmark_filename``)."""
        if not self._lazy:
            return window_items(rows[self.item_id_list_field])
        end = rows[SEQ_END_FIELD].numpy()
        first = self._user_first[end]
        lengths = torch.from_numpy(end - first)
        row = torch.repeat_interleave(torch.arange(len(end)), lengths)
        offsets = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        pos = torch.repeat_interleave(torch.from_numpy(first), lengths) + offsets
        return row, self._flat[self.iid_field][pos]

    def history_lists(self, index) -> Interaction:
        """The rows at ``index`` with their ``<field>_list`` windows (what a batch holds)."""
        return self.__getitem__(index, join=False)


def window_items(item_lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, item)`` of every real (non-padding) item in (batch, L) ``item_id_list`` windows."""
    row, col = torch.nonzero(item_lists, as_tuple=True)
    return row, item_lists[row, col]


def rows_per_batch(dataset, batch_size: int) -> int:
    """Rows a training batch takes for ``train_batch_size`` = ``batch_size`` (see the module
    docstring): ``batch_size`` itself unless ``dataset`` holds several targets per row."""
    per_row = getattr(dataset, "targets_per_row", None)
    if not per_row:
        return batch_size
    return max(1, int(round(batch_size / per_row)))
