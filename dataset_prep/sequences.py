"""One-user-per-line sequence files -> a RecBole ``.inter`` atomic file.

The format SASRec-style code ships data sets in (``ml-1m.txt``, the S3-Rec Amazon files
``Toys_and_Games.txt``, ``Sports_and_Outdoors.txt``, ...): one line per user,
``user item item ...``, whitespace-separated, items in time order. There is no timestamp, so
``timestamp`` = the item's position in its line (0, 1, ...), which keeps RecBole's time ordering
and leave-one-out split exact. User and item tokens are kept as written (RecBole remaps tokens).

Usage::

    python -m dataset_prep.sequences --input ../shared/data/amazon-s3/Toys_and_Games.txt \\
        --output-dir dataset/amazon-toys-s3

Why a line loop rather than pyarrow: each line has a different number of columns, which a CSV
reader cannot parse as a table; such files are at most tens of millions of interactions (a few
seconds per million here), and a bad line is reported with its exact line number.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from dataset_prep.common import (
    ON_BAD_LINES,
    BadInputError,
    BadLineCounter,
    ConversionSummary,
    InputFileError,
    atomic_outputs,
    open_text,
    run_cli,
)

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _decoded(f: IO[str], path: Path) -> Iterator[str]:
    """The lines of ``f``; a line that is not in the file's encoding raises
    :class:`~dataset_prep.common.InputFileError` with its line number."""
    line_no = 0
    while True:
        try:
            line = f.readline()
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{path}:{line_no + 1}: not {exc.encoding} text ({exc.reason}); "
                                 "a binary file, or a different encoding?") from None
        if not line:
            return
        line_no += 1
        yield line


def numbered_lines(f: IO[str], path: Path, bad: BadLineCounter, progress: tqdm | None = None
                   ) -> Iterator[tuple[int, str]]:
    """Yield ``(line_no, text)`` without the line ending (LF or CRLF) and without a UTF-8 BOM on
    the first line; flags empty lines and a truncated last line (no newline)."""
    pending = 0
    for line_no, line in enumerate(_decoded(f, path), start=1):
        pending += len(line)
        if progress is not None and pending > 1 << 20:
            progress.update(pending)
            pending = 0
        if not line.endswith("\n"):
            bad.bad(path, line_no, "truncated last line (no newline at end of file)", line)
            continue
        text = line.rstrip("\r\n")
        if line_no == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            bad.bad(path, line_no, "empty line")
            continue
        yield line_no, text
    if progress is not None:
        progress.update(pending)


def write_sequences(path: Path, out: IO[str], bad: BadLineCounter, progress: tqdm | None = None,
                    integer_ids: bool = False, what: str = "user item item ...") -> tuple[set, set, int]:
    """Convert the lines of ``path`` to ``.inter`` rows on ``out`` (header included).

    Returns ``(users, items, interactions)``. ``integer_ids``: every token must be an integer
    (a line that is not is bad). A user with two lines is bad (its history would be ambiguous).
    """
    users: dict[str, int] = {}
    items: set[str] = set()
    n = 0
    out.write(HEADER)
    with open_text(path, encoding="latin-1" if integer_ids else "utf-8") as f:
        for line_no, text in numbered_lines(f, path, bad, progress):
            parts = text.split()
            if integer_ids:
                try:
                    parts = [str(int(p)) for p in parts]
                except ValueError:
                    bad.bad(path, line_no, f"expected integers '{what}'", text)
                    continue
            if len(parts) < 2:
                bad.bad(path, line_no, f"a user line needs a user and at least one item ('{what}')", text)
                continue
            user = parts[0]
            if user in users:
                bad.bad(path, line_no, f"user {user} already had a line (line {users[user]})", text)
                continue
            users[user] = line_no
            out.write("".join(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(parts[1:])))
            items.update(parts[1:])
            n += len(parts) - 1
    return set(users), items, n


def convert(input_path: str | Path, output_dir: str | Path, name: str | None = None,
            on_bad_lines: str = "error", force: bool = False, progress: bool = True) -> ConversionSummary:
    """Convert a sequence file to ``<output_dir>/<name>.inter``.

    ``name`` defaults to the output folder's name (``dataset/amazon-toys-s3`` -> ``amazon-toys-s3``),
    which is what RecBole expects with ``data_path: dataset``. Raises :class:`BadInputError` (file
    and line) on a malformed line unless ``on_bad_lines="skip"``; nothing is written on failure,
    and an existing output is kept unless ``force``.
    """
    if on_bad_lines not in ON_BAD_LINES:
        raise ValueError(f"on_bad_lines must be one of {ON_BAD_LINES}, got {on_bad_lines!r}")
    start = time.perf_counter()
    source, output_dir = Path(input_path), Path(output_dir)
    if not source.is_file():
        raise FileNotFoundError(f"--input {source}: no such file")
    name = name or output_dir.resolve().name
    target = output_dir / f"{name}.inter"
    bad = BadLineCounter(on_bad_lines)
    with atomic_outputs([target], force=force) as (tmp,):
        bar = tqdm(total=source.stat().st_size, unit="B", unit_scale=True,
                   desc=f"converting {source.name}", disable=not progress)
        with bar, open(tmp, "w", encoding="utf-8", buffering=1 << 20) as out:
            users, items, n = write_sequences(source, out, bad, bar)
        if n == 0:
            raise BadInputError(source, 1, "no valid user line in the file")
    return ConversionSummary(source, "sequence", len(users), len(items), n, bad.summary(),
                           time.perf_counter() - start, [target])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataset_prep.sequences",
        description="Convert a one-user-per-line sequence file ('user item item ...', items in time "
                    "order) to a RecBole .inter file (timestamp = position in the line).",
    )
    p.add_argument("--input", required=True, help="the sequence file (.gz/.bz2/.xz are read too)")
    p.add_argument("--output-dir", required=True, help="e.g. dataset/amazon-toys-s3 (RecBole's data_path/<dataset>)")
    p.add_argument("--name", default=None, help="dataset name (default: the output folder's name)")
    p.add_argument("--on-bad-lines", default="error", choices=ON_BAD_LINES,
                   help="stop at the first malformed line (default) or skip and count them")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert(args.input, args.output_dir, args.name, args.on_bad_lines,
                                   args.force, progress=not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
