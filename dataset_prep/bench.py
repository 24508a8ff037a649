"""Converter benchmark: rows/s and peak RSS of dataset_prep.lfm1b on a synthetic file.

    python -m dataset_prep.bench --rows 100000000 [--users 20000] [--max-len 1000] [--workdir /tmp/dp-bench]

Generates the synthetic LFM-1b file once (kept in ``--workdir`` for later runs), then converts
it in a fresh process and prints the figures against the targets (>= 5M rows/s, <= 1.5 GiB).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from dataset_prep.synthetic import generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset_prep.bench", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000_000)
    p.add_argument("--max-len", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/dataset_prep_bench")
    a = p.parse_args(argv)
    work = Path(a.workdir)
    src = work / f"lfm1b-synthetic-{a.rows}-{a.users}.txt"
    if not src.exists():
        t = time.perf_counter()
        generate(src, "lfm1b", a.rows, a.users, a.items, seed=0)
        print(f"generated {src} ({src.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    cmd = [sys.executable, "-m", "dataset_prep.lfm1b", "--input", str(src), "--output-dir",
           str(work / "out" / "lfm1b-bench"), "--max-len", str(a.max_len), "--force", "--no-progress"]
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 1
    print(run.stdout.strip())
    rss = float(re.search(r"peak RSS (\d+) MiB", run.stdout).group(1)) / 1024
    rate = a.rows / wall
    print(f"\n{a.rows:,} rows ({src.stat().st_size / 2**30:.2f} GiB), {a.users:,} users, keep {a.max_len}/user: "
          f"{wall:.1f} s wall incl. start-up = {rate / 1e6:.2f}M rows/s (target >= 5M: "
          f"{'met' if rate >= 5e6 else 'NOT met'}), peak RSS {rss:.2f} GiB (target <= 1.5: "
          f"{'met' if rss <= 1.5 else 'NOT met'}); full LFM-1b (1.088e9 rows) at this rate: "
          f"{1.088e9 / rate / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
