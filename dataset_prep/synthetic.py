"""Synthetic LFM-1b and KuaiRand log files of any size, seeded, for tests and benchmarks.

Not data: ids and times are random (users uniform, items Zipf-like, times increasing per file
chunk), in exactly the raw formats the converters read.

    python -m dataset_prep.synthetic --format lfm1b --rows 100000000 --users 20000 \\
        --items 5000000 --seed 0 --output /tmp/LFM-1b_LEs.synthetic.txt
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


def _chunk(rng: np.random.Generator, n: int, users: int, items: int, t0: int, fmt: str) -> pa.Table:
    user = rng.integers(0, users, n)
    # Zipf-like popularity: a few items get most events
    item = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)
    ts = t0 + np.sort(rng.integers(0, 3600, n))
    if fmt == "lfm1b":
        return pa.table({"u": user, "artist": item // 50, "album": item // 10, "track": item, "t": ts})
    ms = ts * 1000 + rng.integers(0, 1000, n)
    cols = {"user_id": user, "video_id": item, "date": np.full(n, 20220408), "hourmin": np.full(n, 1200),
            "time_ms": ms, "is_click": rng.integers(0, 2, n)}
    for c in KUAIRAND_COLUMNS[6:]:
        cols[c] = rng.integers(0, 2, n)
    return pa.table(cols)


def generate(output: str | Path, fmt: str = "lfm1b", rows: int = 1_000_000, users: int = 10_000,
             items: int = 1_000_000, seed: int = 0, progress: bool = True) -> Path:
    """Write ``rows`` synthetic events in ``fmt`` (lfm1b | kuairand) to ``output``.

    Compression follows the extension (``.gz``, ``.bz2``, ``.zst``). Returns the path.
    """
    if fmt not in ("lfm1b", "kuairand"):
        raise ValueError(f"format must be lfm1b or kuairand, got {fmt!r}")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    path = generate(a.output, a.format, a.rows, a.users, a.items, a.seed, progress=not a.no_progress)
    print(f"wrote {a.rows:,} synthetic {a.format} rows to {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
