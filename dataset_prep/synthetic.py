"""Synthetic LFM-1b and KuaiRand log files of any size, seeded, for tests and benchmarks.

Not data: ids and times are random, in exactly the raw formats the converters read. Two shapes:

* rows (default): ``--rows`` events, users uniform, items Zipf-like, times increasing per file
  chunk (a converter's worst case: every user's events scattered over the whole file);
* sessions (``--events-per-user N``): every user has exactly N events, user after user, in
  sessions of geometric length (mean ``--session-mean``) whose tracks come from one album of 10
  consecutive ids around an anchor drawn with Zipf popularity over the whole catalogue, minutes
  apart within a session and about a day apart between sessions: the shape of a listening log,
  with a learnable next-item signal and millions of distinct items at the seed's scale.

    python -m dataset_prep.synthetic --format lfm1b --rows 100000000 --users 20000 \\
        --items 5000000 --seed 0 --output /tmp/LFM-1b_LEs.synthetic.txt
    python -m dataset_prep.synthetic --format lfm1b --users 25001 --events-per-user 1000 \\
        --items 5000000 --output /tmp/LFM-1b_LEs.sessions.txt
    python -m dataset_prep.synthetic --format kuairand --rows 1000000 --output /tmp/kuairand.csv.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

KUAIRAND_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like",
                    "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
                    "duration_ms", "profile_stay_time", "comment_stay_time", "is_profile_enter",
                    "is_rand", "tab"]
CHUNK = 2_000_000
ALBUM = 10  # tracks per album in the sessions shape


def zipf_ids(rng: np.random.Generator, n: int, n_items: int, a: float = 1.1) -> np.ndarray:
    """``n`` ids in ``0..n_items-1`` with a Zipf-like popularity (rank r has weight ~ r^-a),
    scattered over the id space by a multiplicative hash, so popular ids are not all low ids."""
    ranks = np.minimum(rng.zipf(a, n), n_items) - 1
    return (ranks * 2_654_435_761 % n_items).astype(np.int64)


def _sessions(rng: np.random.Generator, first_user: int, users: int, events: int, items: int,
              session_mean: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) of ``users`` consecutive users with ``events`` events each, in
    user-then-time order (see the module docstring)."""
    n = users * events
    user = np.repeat(np.arange(first_user, first_user + users, dtype=np.int64), events)
    start = rng.random(n) < 1.0 / session_mean
    start[::events] = True  # every user's first event opens a session
    session = np.cumsum(start) - 1  # global session index of every event
    anchors = zipf_ids(rng, int(session[-1]) + 1, items)
    album = (anchors // ALBUM)[session] * ALBUM
    item = np.minimum(album + rng.integers(0, ALBUM, n), items - 1)
    gap = np.where(start, rng.exponential(86_400.0, n) + 600, rng.integers(120, 420, n)).astype(np.int64)
    gap[::events] = rng.integers(0, 365 * 86_400, users)  # each user's first listen in 2013-2014
    ts = 1_356_998_400 + np.cumsum(gap.reshape(users, events), axis=1).reshape(-1)
    return user, item, ts


def _table(user: np.ndarray, item: np.ndarray, ts: np.ndarray, fmt: str, rng: np.random.Generator) -> pa.Table:
    """Events (user, item, timestamp in seconds) as the rows of ``fmt``'s raw file."""
    if fmt == "lfm1b":
        return pa.table({"u": user, "artist": item // (ALBUM * 5), "album": item // ALBUM, "track": item, "t": ts})
    n = user.shape[0]
    cols = {"user_id": user, "video_id": item, "date": np.full(n, 20220408), "hourmin": np.full(n, 1200),
            "time_ms": ts * 1000 + rng.integers(0, 1000, n), "is_click": rng.integers(0, 2, n)}
    for c in KUAIRAND_COLUMNS[6:]:
        cols[c] = rng.integers(0, 2, n)
    return pa.table(cols)


def _chunk(rng: np.random.Generator, n: int, users: int, items: int, t0: int, fmt: str) -> pa.Table:
    user = rng.integers(0, users, n)
    # Zipf-like popularity: a few items get most events
    item = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)
    ts = t0 + np.sort(rng.integers(0, 3600, n))
    return _table(user, item, ts, fmt, rng)


def generate(output: str | Path, fmt: str = "lfm1b", rows: int = 1_000_000, users: int = 10_000,
             items: int = 1_000_000, seed: int = 0, progress: bool = True,
             events_per_user: int | None = None, session_mean: float = 20.0) -> Path:
    """Write synthetic events in ``fmt`` (lfm1b | kuairand) to ``output``: ``rows`` events in
    the rows shape, or ``users x events_per_user`` in the sessions shape (module docstring).

    Compression follows the extension (``.gz``, ``.bz2``, ``.zst``). Returns the path.
    """
    if fmt not in ("lfm1b", "kuairand"):
        raise ValueError(f"format must be lfm1b or kuairand, got {fmt!r}")
    if users < 1 or items < 1 or (events_per_user is not None and events_per_user < 1) or session_mean < 1:
        raise ValueError(f"users, items and events_per_user must be >= 1 and session_mean >= 1; got users={users}, "
                         f"items={items}, events_per_user={events_per_user}, session_mean={session_mean}")
    if events_per_user is not None:
        rows = users * events_per_user
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    codec = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}.get(output.suffix)
    rng = np.random.default_rng(seed)
    sink = pa.output_stream(str(output), compression=codec)
    delimiter = "\t" if fmt == "lfm1b" else ","
    opts = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    with sink, tqdm(total=rows, unit="rows", unit_scale=True, desc="generating", disable=not progress) as bar:
        if fmt == "kuairand":
            sink.write((",".join(KUAIRAND_COLUMNS) + "\n").encode())
        done, t0 = 0, 1_300_000_000
        if events_per_user is not None:
            per_chunk = max(1, CHUNK // events_per_user)
            for first in range(0, users, per_chunk):
                count = min(per_chunk, users - first)
                cols = _sessions(rng, first, count, events_per_user, items, session_mean)
                pacsv.write_csv(_table(*cols, fmt, rng), sink, opts)
                bar.update(count * events_per_user)
            return output
        while done < rows:
            n = min(CHUNK, rows - done)
            pacsv.write_csv(_chunk(rng, n, users, items, t0, fmt), sink, opts)
            done += n
            t0 += 3600
            bar.update(n)
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset_prep.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=("lfm1b", "kuairand"), default="lfm1b")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--events-per-user", type=int, help="sessions shape: exactly this many events per user "
                   "(--rows is then users x events-per-user)")
    p.add_argument("--session-mean", type=float, default=20.0, help="sessions shape: mean events per session")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    path = generate(a.output, a.format, a.rows, a.users, a.items, a.seed, progress=not a.no_progress,
                    events_per_user=a.events_per_user, session_mean=a.session_mean)
    rows = a.users * a.events_per_user if a.events_per_user else a.rows
    print(f"wrote {rows:,} synthetic {a.format} rows to {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
