"""KuaiRand logs -> RecBole atomic files, streaming (see :mod:`dataset_prep.events`).

Input: one or more KuaiRand log CSVs (``log_standard_4_08_to_4_21_27k_part1.csv`` ..., optionally
compressed), each with its header (``user_id,video_id,date,hourmin,time_ms,is_click,...``).
Item = video id, one event per impression, time = ``time_ms``. Per user the first (the original paper's
protocol) or last ``--max-len`` events are kept. ``--clicked-only`` keeps clicked impressions
(``is_click == 1``) only.

    python -m dataset_prep.kuairand --input log_standard_4_08_to_4_21_27k_part1.csv \\
        log_standard_4_08_to_4_21_27k_part2.csv --output-dir dataset/kuairand-2k --max-len 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dataset_prep.common import run_cli
from dataset_prep.events import Layout, add_event_arguments, convert_events, ensure_inputs, header_of

REQUIRED = ("user_id", "video_id", "time_ms")


def layout_for(path: Path, clicked_only: bool = False) -> Layout:
    """The file's layout from its header; a clear error when a needed column is missing."""
    names = header_of(path, ",")
    need = REQUIRED + (("is_click",) if clicked_only else ())
    missing = [c for c in need if c not in names]
    if missing:
        raise ValueError(f"{path}:1: the header lacks {', '.join(missing)} (found: {','.join(names)}); "
                         "is this a KuaiRand log file?")
    return Layout(names=names, user="user_id", item="video_id", time="time_ms", delimiter=",",
                  header=True, filters={"is_click": 1} if clicked_only else {})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dataset_prep.kuairand", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, nargs="+", help="KuaiRand log CSV file(s), in time order")
    p.add_argument("--output-dir", required=True, help="e.g. dataset/kuairand-2k")
    p.add_argument("--clicked-only", action="store_true", help="keep clicked impressions only")
    add_event_arguments(p, max_len=2000, keep="first")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)

    def convert():
        paths = ensure_inputs(a.input)
        layouts = {p: layout_for(p, a.clicked_only) for p in paths}  # check every header first
        return convert_events(paths, layouts.__getitem__, a.output_dir, a.name, a.max_len, a.keep,
                              a.num_users, a.on_bad_lines, a.force, not a.no_progress,
                              source=f"KuaiRand {'clicks' if a.clicked_only else 'impressions'}, "
                                     f"{a.keep} {a.max_len} per user")

    return run_cli(convert)


if __name__ == "__main__":
    sys.exit(main())
