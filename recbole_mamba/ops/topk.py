"""Top-k of dot-product scores over a large catalogue, one chunk of items at a time.

Full ranking scores every item for every user: a ``(users, items)`` matrix, 80 GB for a batch of
4,096 users over 5M items. :func:`chunked_topk` never holds more than ``(users, chunk)`` scores:
it scores ``chunk`` items at a time, keeps each chunk's top ``k`` and merges them into the running
top ``k``. The result is the top ``k`` of the full matrix (``torch.topk`` on it), up to the order
of exactly equal scores.

Written here rather than taken from a library: the retrieval libraries (FAISS, ScaNN) answer
approximate or index-based queries over a fixed item set; evaluation needs the exact top ``k``
against embeddings that change every epoch, with per-user exclusions, in plain torch on any
device.
"""

from __future__ import annotations

import torch

#: Scores held at once by default: 2**25 float32 values (128 MiB).
DEFAULT_SCORE_BUDGET = 1 << 25


def chunk_for(n_users: int, budget: int = DEFAULT_SCORE_BUDGET) -> int:
    """Items per chunk so that ``n_users x chunk`` scores stay within ``budget`` values."""
    return max(1, budget // max(1, n_users))


def chunked_topk(query: torch.Tensor, items: torch.Tensor, k: int, chunk: int,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                 exclude_items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items for each query by dot product, ``chunk`` items scored at a time.

    Args:
        query: (B, D) user vectors.
        items: (N, D) item vectors (an embedding table's weight).
        k: list length, ``1 <= k <= N``.
        chunk: items scored at once (memory is O(B x chunk)).
        exclude: ``(rows, item_ids)``, two (E,) int64 tensors: ``item_ids[e]`` is never
            recommended to query ``rows[e]`` (its score is ``-inf``, as RecBole's
            ``scores[history_index] = -inf``).
        exclude_items: (M,) item ids excluded for every query (RecBole's padding item 0).

    Returns:
        ``(values, index)``: (B, k) scores in descending order and their item ids, as
        ``torch.topk(query @ items.T with the exclusions set to -inf, k)``.
    """
    if query.dim() != 2 or items.dim() != 2 or query.shape[1] != items.shape[1]:
        raise ValueError(f"chunked_topk: query (B, D) and items (N, D) expected, got {tuple(query.shape)} "
                         f"and {tuple(items.shape)}")
    n_items = items.shape[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"chunked_topk: k must be in [1, {n_items}], got {k}")
    if chunk < 1:
        raise ValueError(f"chunked_topk: chunk must be >= 1, got {chunk}")
    device = query.device
    n = query.shape[0]
    if exclude is not None and exclude[0].numel():
        # sorted by item once, so each chunk finds its exclusions by binary search
        rows, ids = exclude[0].to(device), exclude[1].to(device)
        order = torch.argsort(ids)
        rows, ids = rows[order], ids[order]
    else:
        rows = ids = None
    best_v = torch.full((n, 0), float("-inf"), dtype=query.dtype, device=device)
    best_i = torch.zeros((n, 0), dtype=torch.long, device=device)
    chunk = max(chunk, k)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        scores = query @ items[start:stop].t()  # (B, c)
        if exclude_items is not None:
            local = exclude_items[(exclude_items >= start) & (exclude_items < stop)] - start
            scores[:, local.to(device)] = float("-inf")
        if ids is not None:
            lo, hi = torch.searchsorted(ids, torch.tensor([start, stop], device=device)).tolist()
            if hi > lo:
                scores[rows[lo:hi], ids[lo:hi] - start] = float("-inf")
        v, i = scores.topk(min(k, stop - start), dim=1)
        best_v = torch.cat([best_v, v], dim=1)
        best_i = torch.cat([best_i, i + start], dim=1)
        if best_v.shape[1] > k:
            best_v, pick = best_v.topk(k, dim=1)
            best_i = best_i.gather(1, pick)
    return best_v, best_i


__all__ = ["chunked_topk", "chunk_for", "DEFAULT_SCORE_BUDGET"]
