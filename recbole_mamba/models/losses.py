"""Every training loss of our models (and of RecBole's SASRec / GRU4Rec through the plugin), with
the negative samplers beside them. Both training modes call :meth:`RecLoss.__call__` with the
outputs at the trained positions: one per row (``train_mode: augment``) or every real position
(``train_mode: all_positions``).

``loss_type``:

* ``CE``: softmax over all items. Memory O(positions x n_items).
* ``BPR``: -log sigmoid(s+ - s-) with one negative per position (RecBole's ``BPRLoss``).
* ``BCE``: binary cross-entropy of s+ against 1 and s- against 0, one negative per position (the
  original MambaRec code's loss).
* ``SS``: sampled softmax. ``n_negatives`` item ids are drawn once per batch and shared by every
  position; each position's classes are its target and those negatives (a negative equal to the
  target is masked out). Memory O(positions x n_negatives), never O(positions x n_items).
* ``gBCE``: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023) over the same shared
  negatives: -(beta * log sigmoid(s+) + sum_k log sigmoid(-s_k)) / (1 + K), with
  beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = K / (n_items - 1), t = ``gbce_t``.

Config keys of the sampled losses (read with these defaults when absent, so RecBole's baselines,
which do not load our YAML files, get them too): ``n_negatives`` (256), ``ss_sampling``
(``uniform`` | ``popularity``: proportional to the item's count among the training targets,
plus one), ``ss_in_batch`` (0.0: the share of the negatives taken from the batch's own
targets, which are popularity-distributed), ``ss_logq`` (False: subtract log(K q(i)) from each
negative's score, q the proposal probability of item i, the logQ correction of Bengio & Senecal
and Yi et al. (RecSys 2019); zero for exhaustive uniform sampling), ``gbce_t`` (0.75, gSASRec's).
"""

from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F

LOSS_TYPES = ("CE", "BPR", "BCE", "SS", "gBCE")
#: Losses that draw one negative per position (from RecBole in augment mode, else our own).
PAIRWISE_LOSSES = ("BPR", "BCE")
#: Losses over negatives shared by the batch: RecBole's train_neg_sample_args must be None.
SHARED_NEGATIVE_LOSSES = ("SS", "gBCE")
SS_SAMPLINGS = ("uniform", "popularity")

DEFAULTS = {"n_negatives": 256, "ss_sampling": "uniform", "ss_in_batch": 0.0, "ss_logq": False,
            "gbce_t": 0.75, "sparse_item_embedding": "auto",
            "train_exclude_seen": False}
#: Losses that read only some rows of the item table per step (its gradient can be sparse).
SPARSE_LOSSES = SHARED_NEGATIVE_LOSSES + PAIRWISE_LOSSES
#: ``sparse_item_embedding: auto`` makes the item embedding sparse from this many items, with a
#: loss of SPARSE_LOSSES (CE scores every item: its gradient is dense). Measured with
#: ``python -m recbole_mamba.bench.catalogue`` (docs/large-catalogues.md).
AUTO_SPARSE_MIN_ITEMS = 200_000


def _get(config, key: str):
    value = config[key] if key in config else None  # a dict or RecBole's Config
    return DEFAULTS[key] if value is None else value


def sparse_embedding_wanted(config, n_items: int, loss_type: str, owner: str = "model") -> bool:
    """Whether the item embedding is built with ``sparse=True`` (its gradient then holds only the
    rows a batch used, and :mod:`recbole_mamba.optim` updates it with ``SparseAdam``):
    ``sparse_item_embedding`` True / False, or ``auto`` (the default): from
    :data:`AUTO_SPARSE_MIN_ITEMS` items with a loss of :data:`SPARSE_LOSSES`."""
    value = _get(config, "sparse_item_embedding")
    if value == "auto":
        return loss_type in SPARSE_LOSSES and n_items >= AUTO_SPARSE_MIN_ITEMS
    if value is True and loss_type not in SPARSE_LOSSES:
        raise ValueError(f"{owner}: sparse_item_embedding needs a sampled loss (loss_type {', '.join(SPARSE_LOSSES)}); "
                         f"loss_type {loss_type} scores every item, so its gradient is dense")
    return bool(value)


class SharedNegativeSampler:
    """Draws the batch's shared negatives and knows their proposal probabilities.

    ``n_items`` counts RecBole's padding id 0, which is never drawn. ``item_counts`` (n_items,)
    are the training-target counts (needed for popularity sampling, in-batch negatives and logQ).
    """

    def __init__(self, n_items: int, n_negatives: int, sampling: str = "uniform",
                 in_batch: float = 0.0, item_counts: np.ndarray | torch.Tensor | None = None) -> None:
        if n_items < 3:
            raise ValueError(f"sampled losses need at least two items besides padding, got n_items={n_items}")
        if int(n_negatives) < 1:
            raise ValueError(f"n_negatives must be a positive integer, got {n_negatives!r}")
        if sampling not in SS_SAMPLINGS:
            raise ValueError(f"ss_sampling must be one of {SS_SAMPLINGS}, got {sampling!r}")
        if not 0.0 <= float(in_batch) <= 1.0:
            raise ValueError(f"ss_in_batch must be a share in [0, 1], got {in_batch!r}")
        self.n_items = int(n_items)
        self.n_negatives = int(n_negatives)
        self.sampling = sampling
        self.in_batch = float(in_batch)
        counts = torch.zeros(self.n_items, dtype=torch.float64)
        if item_counts is not None:
            c = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64).flatten()[: self.n_items]
            counts[: len(c)] = c
        counts[0] = 0.0
        self.n_in_batch = int(round(self.n_negatives * self.in_batch))
        self.n_drawn = self.n_negatives - self.n_in_batch
        # proposal of the drawn part: uniform over 1..n-1, or popularity (+1 smoothing)
        if sampling == "uniform":
            drawn = torch.ones(self.n_items, dtype=torch.float64)
        else:
            drawn = counts + 1.0
        drawn[0] = 0.0
        self._drawn_probs = drawn / drawn.sum()
        pop = counts.clone() if counts.sum() > 0 else torch.ones(self.n_items, dtype=torch.float64)
        pop[0] = 0.0
        pop_probs = pop / pop.sum()
        # what one negative's id follows: a mixture of the drawn proposal and the target popularity
        mix = (self.n_drawn * self._drawn_probs + self.n_in_batch * pop_probs) / self.n_negatives
        self.log_q = torch.log(mix.clamp_min(1e-30)).to(torch.float32)

    def sample(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (P,) item ids of the batch -> (K,) negative ids, K = ``n_negatives``."""
        device = targets.device
        parts = []
        if self.n_drawn:
            if self.sampling == "uniform":
                parts.append(torch.randint(1, self.n_items, (self.n_drawn,), device=device))
            else:
                parts.append(torch.multinomial(self._drawn_probs.to(torch.float32), self.n_drawn,
                                               replacement=True).to(device))
        if self.n_in_batch:
            pick = torch.randint(0, targets.numel(), (self.n_in_batch,), device=device)
            parts.append(targets.reshape(-1)[pick])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def uniform_negatives_except(targets: torch.Tensor, n_items: int) -> torch.Tensor:
    """One id per position, uniform over 1..n_items-1 except that position's target: (P,)."""
    neg = torch.randint(1, n_items - 1, targets.shape, device=targets.device)
    return neg + (neg >= targets).long()


class RecLoss:
    """The loss of ``loss_type`` (see the module docstring) for a model with ``n_items`` items.

    Call with ``hidden`` (P, D) outputs, ``targets`` (P,) item ids, the item embedding table
    ``weight`` (n_items, D), and for BPR/BCE optionally ``neg`` (P,) (RecBole's sampled negatives;
    drawn uniformly here when None). Returns the mean loss over the P positions (a scalar).
    """

    def __init__(self, loss_type: str, n_items: int, config=None,
                 item_counts: np.ndarray | torch.Tensor | None = None, owner: str = "model",
                 sparse: bool = False) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"{owner}: loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if sparse and loss_type not in SPARSE_LOSSES:
            raise ValueError(f"{owner}: a sparse item embedding needs loss_type {', '.join(SPARSE_LOSSES)}")
        self.loss_type = loss_type
        #: rows of the item table are read with F.embedding(sparse=True): a sparse gradient
        self.sparse = sparse
        #: train_exclude_seen: the items a position has seen are not among its classes
        self.exclude_seen = bool(_get(config if config is not None else {}, "train_exclude_seen"))
        if self.exclude_seen and loss_type in PAIRWISE_LOSSES:
            raise ValueError(f"{owner}: train_exclude_seen applies to loss_type CE, SS and gBCE, not {loss_type}")
        self.n_items = int(n_items)
        config = {} if config is None else config
        self.sampler = None
        if loss_type in SHARED_NEGATIVE_LOSSES:
            self.sampler = SharedNegativeSampler(
                self.n_items, int(_get(config, "n_negatives")), str(_get(config, "ss_sampling")),
                float(_get(config, "ss_in_batch")), item_counts)
            self.logq = bool(_get(config, "ss_logq"))
            self.gbce_t = float(_get(config, "gbce_t"))
            if not 0.0 <= self.gbce_t <= 1.0:
                raise ValueError(f"{owner}: gbce_t must be in [0, 1], got {self.gbce_t}")

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                 neg: torch.Tensor | None = None,
                 seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``seen``: ``(position, item)`` pairs (two (E,) tensors) left out of that position's
        classes (``train_exclude_seen``); CE, SS and gBCE only, a pair naming the position's own
        target is ignored."""
        if seen is not None:
            seen = _without_targets(seen, targets)
        if self.loss_type == "CE":
            logits = hidden @ weight.t()
            if seen is not None:
                logits = logits.index_put(seen, torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
            return F.cross_entropy(logits, targets)
        if self.loss_type in PAIRWISE_LOSSES:
            if neg is None:
                neg = uniform_negatives_except(targets, self.n_items)
            pos_score = (hidden * self._rows(weight, targets)).sum(-1)
            neg_score = (hidden * self._rows(weight, neg)).sum(-1)
            if self.loss_type == "BPR":  # RecBole's BPRLoss
                return -torch.log(1e-10 + torch.sigmoid(pos_score - neg_score)).mean()
            return (F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score))
                    + F.binary_cross_entropy_with_logits(neg_score, torch.zeros_like(neg_score)))
        negatives = self.sampler.sample(targets)
        return self.shared_negative_loss(hidden, targets, weight, negatives, seen)

    def _rows(self, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """weight[ids], with a sparse gradient when the embedding is sparse."""
        return F.embedding(ids, weight, sparse=self.sparse) if self.sparse else weight[ids]

    def shared_negative_loss(self, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                             negatives: torch.Tensor,
                             seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """SS or gBCE of hidden (P, D) against targets (P,) and shared ``negatives`` (K,);
        ``seen`` (position, item) pairs are not negatives of their position."""
        pos_score = (hidden * self._rows(weight, targets)).sum(-1)  # (P,)
        neg_score = hidden @ self._rows(weight, negatives).t()      # (P, K)
        own = negatives.unsqueeze(0) == targets.unsqueeze(1)    # a target is never its own negative
        if seen is not None and seen[0].numel():
            n = self.n_items
            keys = torch.arange(len(targets), device=targets.device).unsqueeze(1) * n + negatives.unsqueeze(0)
            own = own | torch.isin(keys, seen[0] * n + seen[1])
        if self.loss_type == "SS":
            if self.logq:
                neg_score = neg_score - (self.sampler.log_q.to(neg_score.device)[negatives]
                                         + math.log(negatives.numel())).to(neg_score.dtype)
            neg_score = neg_score.masked_fill(own, float("-inf"))
            logits = torch.cat([pos_score.unsqueeze(1), neg_score], dim=1)
            return (torch.logsumexp(logits, dim=1) - pos_score).mean()
        k = negatives.numel()
        alpha = k / (self.n_items - 1)
        beta = alpha * (self.gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
        neg_term = F.logsigmoid(-neg_score).masked_fill(own, 0.0).sum(1)
        return (-(beta * F.logsigmoid(pos_score) + neg_term) / (1 + k)).mean()


def _without_targets(seen: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, items = seen
    keep = items != targets[rows]
    return rows[keep], items[keep]


def seen_pairs(item_seq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position, item)`` pairs of the items a trained position has already seen.

    ``item_seq`` (B, L) windows; ``positions`` (B, L) the index of each trained position in the
    loss's (P,) rows, -1 where a position is not trained. Position t of row b has seen
    ``item_seq[b, :t + 1]`` (its own input and those before it). Returns two (E,) tensors."""
    length = item_seq.shape[1]
    before = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()  # [t, s]: s <= t
    b, t, s = torch.nonzero((positions >= 0).unsqueeze(2) & before.unsqueeze(0) & (item_seq > 0).unsqueeze(1),
                            as_tuple=True)
    return positions[b, t], item_seq[b, s]


def train_target_counts(dataset) -> np.ndarray | None:
    """Counts (n_items,) of each item among a RecBole training split's targets, or None."""
    counts = getattr(dataset, "train_target_counts", None)
    if counts is not None:
        return counts
    try:
        items = dataset.inter_feat[dataset.iid_field]
    except (AttributeError, KeyError, TypeError):
        return None
    return np.bincount(np.asarray(items), minlength=dataset.item_num)


__all__ = ["LOSS_TYPES", "PAIRWISE_LOSSES", "SHARED_NEGATIVE_LOSSES", "SS_SAMPLINGS", "RecLoss",
           "SharedNegativeSampler", "uniform_negatives_except", "train_target_counts"]
