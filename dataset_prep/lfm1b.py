"""LFM-1b listening events -> RecBole atomic files, streaming (see :mod:`dataset_prep.events`).

Input: ``LFM-1b_LEs.txt`` (optionally .gz/.bz2/.zst): no header, one event per line, five
tab-separated integers ``user-id artist-id album-id track-id timestamp`` (UNIX seconds).
Item = track id. Per user the first or last ``--max-len`` events by time are kept; ``--num-users``
keeps the users with the smallest ids (RecMamba's LFM-1b(1k): the last 1,000 events of the first
25,001 users).

    python -m dataset_prep.lfm1b --input LFM-1b_LEs.txt.bz2 --output-dir dataset/lfm1b-1k \\
        --max-len 1000 --num-users 25001 --keep last
"""

from __future__ import annotations

import argparse
import sys

from dataset_prep.common import run_cli
from dataset_prep.events import Layout, add_event_arguments, convert_events, ensure_inputs

COLUMNS = ["user_id", "artist_id", "album_id", "track_id", "timestamp"]
ITEM_COLUMNS = {"track": "track_id", "album": "album_id", "artist": "artist_id"}


def layout(item: str = "track") -> Layout:
    """The LFM-1b line layout, with ``item`` (track | album | artist) as the item."""
    return Layout(names=COLUMNS, user="user_id", item=ITEM_COLUMNS[item], time="timestamp",
                  delimiter="\t", header=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dataset_prep.lfm1b", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, nargs="+", help="LFM-1b_LEs.txt[.gz|.bz2|.zst] (several allowed)")
    p.add_argument("--output-dir", required=True, help="e.g. dataset/lfm1b-1k")
    p.add_argument("--item", choices=sorted(ITEM_COLUMNS), default="track", help="item column (default track)")
    add_event_arguments(p, max_len=1000, keep="last")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)

    def convert():
        lay = layout(a.item)
        return convert_events(ensure_inputs(a.input), lambda _p: lay, a.output_dir, a.name, a.max_len,
                              a.keep, a.num_users, a.on_bad_lines, a.force, not a.no_progress,
                              source=f"LFM-1b {a.item}s, {a.keep} {a.max_len} per user")

    return run_cli(convert)


if __name__ == "__main__":
    sys.exit(main())
