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
#: Scores computed per tile inside a chunk: 2**22 float32 values (16 MiB, within a server's L3),
#: reused from one buffer. Larger tiles run the product at half the rate on the CPUs measured
#: (docs/large-catalogues.md).
TILE_SCORES = 1 << 22
#: Queries per tile: (2048 x D) @ (D x 2048) keeps the product's output cache-sized.
USER_BLOCK = 2048


def chunk_for(n_users: int, budget: int = DEFAULT_SCORE_BUDGET) -> int:
    """Items per chunk so that ``n_users x chunk`` scores stay within ``budget`` values."""
    return max(1, budget // max(1, n_users))


@torch.no_grad()
def chunked_topk(query: torch.Tensor, items: torch.Tensor, k: int, chunk: int,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                 exclude_items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items for each query by dot product, at most ``chunk`` items scored at a time.

    The scores are computed in tiles of at most :data:`USER_BLOCK` queries x ``chunk`` items and
    :data:`TILE_SCORES` values, written into one reused buffer (a fresh (B, chunk) matrix per
    chunk costs more in page faults than its product on CPU). After a block's first tile only the
    queries whose best score in the tile beats their current ``k``-th best are ranked again, which
    after a few tiles is a small share of them: the cost per score is then the product and one
    row maximum, not a partial sort.

    Args:
        query: (B, D) user vectors.
        items: (N, D) item vectors (an embedding table's weight).
        k: list length, ``1 <= k <= N``.
        chunk: most items scored at once (memory is O(B x chunk)).
        exclude: ``(rows, item_ids)``, two (E,) int64 tensors: ``item_ids[e]`` is never
            recommended to query ``rows[e]`` (its score is ``-inf``, as RecBole's
            ``scores[history_index] = -inf``).
        exclude_items: (M,) item ids excluded for every query (RecBole's padding item 0).

    Returns:
        ``(values, index)``: (B, k) scores in descending order and their item ids, as
        ``torch.topk(query @ items.T with the exclusions set to -inf, k)``, up to which of
        exactly equal scores is kept (across tiles, the lower item id); no gradient flows back.
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
    block = max(1, min(n, USER_BLOCK))
    width = max(k, min(chunk, TILE_SCORES // block))
    if exclude is not None and exclude[0].numel():
        # sorted by (query block, item) once, so each tile finds its exclusions by binary search
        rows, ids = exclude[0].to(device), exclude[1].to(device)
        key = torch.div(rows, block, rounding_mode="floor") * n_items + ids
        order = torch.argsort(key)
        rows, ids, key = rows[order], ids[order], key[order]
    else:
        rows = ids = key = None
    if exclude_items is not None:
        exclude_items = exclude_items.to(device)
    values = torch.empty((n, k), dtype=query.dtype, device=device)
    index = torch.empty((n, k), dtype=torch.long, device=device)
    buf = torch.empty(block * width, dtype=query.dtype, device=device)
    for b0 in range(0, n, block):
        q = query[b0:b0 + block]
        m = q.shape[0]
        base = (b0 // block) * n_items  # this block's exclusion keys start here
        best_v = best_i = None
        for start in range(0, n_items, width):
            stop = min(start + width, n_items)
            w = stop - start
            scores = torch.mm(q, items[start:stop].t(), out=buf[:m * w].view(m, w))
            if exclude_items is not None:
                local = exclude_items[(exclude_items >= start) & (exclude_items < stop)] - start
                scores[:, local] = float("-inf")
            if key is not None:
                lo, hi = torch.searchsorted(key, torch.tensor([base + start, base + stop], device=device)).tolist()
                if hi > lo:
                    scores[rows[lo:hi] - b0, ids[lo:hi] - start] = float("-inf")
            if best_v is None:  # the block's first tile has >= k items (width >= k, n_items >= k)
                best_v, best_i = scores.topk(k, dim=1)
                best_i += start
                continue
            # only queries with a score above their k-th best can change their list
            hit = (scores.amax(dim=1) > best_v[:, -1]).nonzero().squeeze(1)
            if not hit.numel():
                continue
            v, i = scores.index_select(0, hit).topk(min(k, w), dim=1)
            v, pick = torch.cat([best_v.index_select(0, hit), v], dim=1).topk(k, dim=1)
            best_v[hit] = v
            best_i[hit] = torch.cat([best_i.index_select(0, hit), i + start], dim=1).gather(1, pick)
        values[b0:b0 + m] = best_v
        index[b0:b0 + m] = best_i
    return values, index


__all__ = ["chunked_topk", "chunk_for", "DEFAULT_SCORE_BUDGET", "TILE_SCORES", "USER_BLOCK"]
