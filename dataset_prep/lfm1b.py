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
import logging
import sys

from dataset_prep.common import ON_BAD_LINES, BadInputError
from dataset_prep.events import Layout, convert_events, ensure_inputs

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
    p.add_argument("--name", default=None, help="dataset name (default: the output folder's name)")
    p.add_argument("--max-len", type=int, default=1000, help="events kept per user (default 1000)")
    p.add_argument("--num-users", type=int, default=None, help="keep the N users with the smallest ids")
    p.add_argument("--keep", choices=("last", "first"), default="last", help="which events of a user (default last)")
    p.add_argument("--item", choices=sorted(ITEM_COLUMNS), default="track", help="item column (default track)")
    p.add_argument("--on-bad-lines", choices=ON_BAD_LINES, default="error")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = ensure_inputs(a.input)
        lay = layout(a.item)
        summary = convert_events(paths, lambda _p: lay, a.output_dir, a.name, a.max_len, a.keep,
                                 a.num_users, a.on_bad_lines, a.force, not a.no_progress,
                                 source=f"LFM-1b {a.item}s, {a.keep} {a.max_len} per user")
    except (BadInputError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
