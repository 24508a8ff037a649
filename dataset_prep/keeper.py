"""Keep the first or last ``max_len`` events of each user of a stream, in bounded memory.

:class:`PerUserKeeper` receives parsed blocks ``(user, item, time)`` in file order and returns,
at the end, each user's first or last ``max_len`` events by time (ties in arrival order), users
in raw-id order. With ``num_users`` it keeps the users with the smallest ids.

Why hand-written (numba) rather than a dataframe engine: a group-by "top k per user" in
polars/duckdb holds the whole input (a billion rows) before it ranks, and re-sorting the kept
rows with every new chunk (our first version) spent most of a conversion in sorts. Here each
user owns a buffer of ``max_len`` + slack rows, filled in arrival order; only when a buffer
overflows is it sorted by time (a stable sort, skipped when the rows came in time order, as
logs do) and cut back to ``max_len``. After a cut, a threshold drops on arrival every later row
that can no longer make a user's first/last ``max_len``. Each row is touched O(1) times
(amortised), memory is the kept rows plus slack, and the kernel runs on a worker thread without
the GIL while pyarrow parses the next block.
"""

from __future__ import annotations

import heapq
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
from numba import njit

# One shared empty int64 array for "no rows".
_EMPTY = np.empty(0, np.int64)
#: raw user ids below this map to slots through a direct table (one gather per block, no
#: hashing: at most 4 bytes x this many ids); larger ids through a hash factorisation.
DIRECT_IDS = 1 << 25
_UNSEEN = -2


@njit(cache=True, nogil=True)
def _cut(buf, s, n, keep_last, max_len):  # pragma: no cover - compiled
    """Sort slot ``s``'s ``n`` buffered rows by time (stable) and keep ``max_len`` of them at
    the front; returns the threshold time (see :func:`_add_rows`). ``buf[s, k]`` is the k-th
    row's (time, item): one cache line per row, not two."""
    rows = buf[s, :n]
    ordered = True
    for k in range(1, n):
        if rows[k, 0] < rows[k - 1, 0]:
            ordered = False
            break
    if not ordered:
        order = np.argsort(rows[:, 0], kind="mergesort")  # stable: ties keep arrival order
        rows[:] = rows[order]
    if keep_last:
        lo = n - max_len
        for k in range(max_len):
            rows[k, 0] = rows[lo + k, 0]
            rows[k, 1] = rows[lo + k, 1]
        return rows[0, 0]
    return rows[max_len - 1, 0]


@njit(cache=True, nogil=True)
def _add_rows(slots, items, times, buf, fill, thresh, has_thresh, keep_last, max_len):  # pragma: no cover - compiled
    """Append each row to its user's buffer (slot < 0: a dropped user), cutting a full buffer
    back to ``max_len`` rows. After a cut, keep-last drops rows older than the oldest kept row
    and keep-first rows not older than the newest kept row: they rank outside the kept set
    (ties rank by arrival, and a new row arrives after every kept one)."""
    cap = buf.shape[1]
    for r in range(slots.shape[0]):
        s = slots[r]
        if s < 0:
            continue
        t = times[r]
        n = fill[s]
        if n == cap:  # a cut only tightens the threshold, so checking after it drops the same rows
            thresh[s] = _cut(buf, s, n, keep_last, max_len)
            has_thresh[s] = True
            n = fill[s] = max_len
        if has_thresh[s] and ((t < thresh[s]) if keep_last else (t >= thresh[s])):
            continue
        buf[s, n, 0] = t
        buf[s, n, 1] = items[r]
        fill[s] = n + 1


@njit(cache=True, nogil=True)
def _gather(order, buf, fill, raw, keep_last, max_len):  # pragma: no cover - compiled
    """The kept rows of the slots in ``order``: (user, item, time) arrays, sorted by time within
    each user."""
    counts = np.empty(order.shape[0], np.int64)
    for j in range(order.shape[0]):
        s = order[j]
        n = fill[s]
        if n > max_len:
            _cut(buf, s, n, keep_last, max_len)
            n = max_len
        else:
            _cut(buf, s, n, keep_last, n)  # sorts (when needed), keeps all n
        fill[s] = n
        counts[j] = n
    total = counts.sum()
    user = np.empty(total, np.int64)
    item = np.empty(total, np.int64)
    time = np.empty(total, np.int64)
    at = 0
    for j in range(order.shape[0]):
        s = order[j]
        n = counts[j]
        user[at:at + n] = raw[s]
        item[at:at + n] = buf[s, :n, 1]
        time[at:at + n] = buf[s, :n, 0]
        at += n
    return user, item, time


class PerUserKeeper:
    """Keep the first or last ``max_len`` events of each user (of the ``num_users`` smallest ids).

    Feed int64 arrays with :meth:`add` in arrival order; :meth:`result` returns the kept rows
    sorted by (user, time), ties in arrival order. Memory: at most ``num_users`` (or every user)
    x (``max_len`` + slack) rows of 16 bytes; buffers are allocated lazily by the OS (a user's
    pages are touched only as its rows arrive).
    """

    def __init__(self, max_len: int, keep: str = "last", num_users: int | None = None,
                 slack: int | None = None) -> None:
        if keep not in ("first", "last"):
            raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
        if max_len < 1 or (num_users is not None and num_users < 1):
            raise ValueError("max_len and num_users must be positive")
        self.max_len, self.keep, self.num_users = max_len, keep, num_users
        # Slack amortises the cuts: a cut moves max_len rows once per `slack` arrivals.
        self.cap = max_len + (slack if slack is not None else max(max_len // 2, 64))
        self._known = _EMPTY  # sorted raw ids with a slot
        self._known_slot = _EMPTY
        self._free: list[int] = []
        self._n_slots = 0
        self._alloc(num_users if num_users is not None else 1024)
        self._table = np.full(0, _UNSEEN, np.int32)  # raw id -> slot (-1: dropped), ids < DIRECT_IDS
        self._evicted: list[int] = []
        self._kept_heap: list[int] = []  # -raw id of kept users (num_users only)
        self._cutoff: int | None = None  # users above it are dropped on arrival (num_users full)
        # The kernel runs on a worker thread (it releases the GIL) while the caller parses the
        # next block; one block at a time, so rows keep their arrival order.
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._running: Future | None = None

    def _alloc(self, slots: int) -> None:
        old = getattr(self, "_buf", None)
        buf = np.empty((slots, self.cap, 2), np.int64)  # np.empty: pages committed on first write
        fill = np.zeros(slots, np.int64)
        thresh = np.zeros(slots, np.int64)
        has = np.zeros(slots, np.bool_)
        raw = np.zeros(slots, np.int64)
        if old is not None:
            n = old.shape[0]
            buf[:n], fill[:n] = old, self._fill
            thresh[:n], has[:n], raw[:n] = self._thresh, self._has, self._raw
        self._buf, self._fill, self._thresh, self._has, self._raw = buf, fill, thresh, has, raw

    def _wait(self) -> None:
        if self._running is not None:
            self._running.result()  # re-raises a worker's exception
            self._running = None

    def _new_slot(self, uid: int) -> int:
        if self._free:
            s = self._free.pop()
        else:
            if self._n_slots == self._buf.shape[0]:
                self._alloc(2 * self._n_slots)
            s = self._n_slots
            self._n_slots += 1
        self._fill[s] = 0
        self._has[s] = False
        self._raw[s] = uid
        return s

    def _slots_for(self, uniques: np.ndarray) -> np.ndarray:
        """Slots of a block's distinct raw ids (-1: dropped by ``num_users``); new ids get one.
        The ids it evicts (``num_users``) are left in ``self._evicted``."""
        self._evicted = []
        pos = np.searchsorted(self._known, uniques)
        found = pos < len(self._known)
        found[found] = self._known[pos[found]] == uniques[found]
        slots = np.full(len(uniques), -1, np.int64)
        slots[found] = self._known_slot[pos[found]]
        new = np.flatnonzero(~found)
        if len(new) == 0:
            return slots
        evicted = self._evicted = []
        # smallest ids first: an id evicted below is then always one from an earlier block
        for j in new[np.argsort(uniques[new])]:
            uid = int(uniques[j])
            if self.num_users is not None:
                if len(self._kept_heap) == self.num_users:
                    if uid > -self._kept_heap[0]:
                        continue  # not among the smallest ids seen: dropped
                    gone = -heapq.heappushpop(self._kept_heap, -uid)
                    evicted.append(gone)
                else:
                    heapq.heappush(self._kept_heap, -uid)
            slots[j] = self._new_slot(uid)
        if self.num_users is not None and len(self._kept_heap) == self.num_users:
            self._cutoff = -self._kept_heap[0]
        # the id table: drop evicted ids (their slots are free again), add the new ones
        keep = np.ones(len(self._known), np.bool_)
        if evicted:
            gone = np.asarray(evicted, np.int64)
            at = np.searchsorted(self._known, gone)
            inside = (at < len(self._known))
            at = at[inside]
            hit = at[self._known[at] == gone[inside]]
            keep[hit] = False
            self._free.extend(int(s) for s in self._known_slot[hit])
            slots[np.isin(uniques, gone)] = -1  # this block's rows of an evicted user go too
        added = new[slots[new] >= 0]
        ids = np.concatenate([self._known[keep], uniques[added]])
        sl = np.concatenate([self._known_slot[keep], slots[added]])
        order = np.argsort(ids, kind="stable")
        self._known, self._known_slot = ids[order], sl[order]
        return slots

    def _direct_slots(self, user: np.ndarray) -> np.ndarray:
        """Slots of a block's rows through the direct id table (ids in [0, DIRECT_IDS))."""
        top = int(user.max()) + 1
        if top > len(self._table):
            grown = np.full(min(DIRECT_IDS, max(top, 2 * len(self._table))), _UNSEEN, np.int32)
            grown[: len(self._table)] = self._table
            self._table = grown
        slots = self._table[user]
        new = slots == _UNSEEN
        if new.any():
            ids = np.unique(user[new])
            self._table[ids] = self._slots_for(ids)
            if self._evicted:
                self._table[np.asarray(self._evicted, np.int64)] = -1
            slots = self._table[user]
        return slots

    def add(self, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> None:
        """One block of rows in arrival order: three int64 arrays of equal length."""
        self._wait()  # slots may be reused or reallocated below: the previous block must be in
        if self._cutoff is not None:
            m = user <= self._cutoff
            if not m.all():
                user, item, ts = user[m], item[m], ts[m]
        if len(user) == 0:
            return
        if 0 <= int(user.min()) and int(user.max()) < DIRECT_IDS:
            slots = self._direct_slots(user)
        else:
            codes, uniques = pd.factorize(user)  # hash-based, O(n)
            slots = self._slots_for(np.asarray(uniques, np.int64))[codes]
        self._running = self._pool.submit(
            _add_rows, slots, np.ascontiguousarray(item, np.int64), np.ascontiguousarray(ts, np.int64),
            self._buf, self._fill, self._thresh, self._has, self.keep == "last", self.max_len)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept rows ``(user, item, time)``, sorted by user then time."""
        self._wait()
        self._pool.shutdown()
        order = self._known_slot  # slots in raw-id order
        if len(order) == 0:
            return _EMPTY, _EMPTY, _EMPTY
        return _gather(order, self._buf, self._fill, self._raw, self.keep == "last",
                       self.max_len)
