"""MovieLens (ML-1M, ML-10M, ML-20M style files) -> RecBole atomic files.

Two input formats for the interactions:

* ``ratings``: the official ``ratings.dat``, one ``UserID::MovieID::Rating::Timestamp`` per line;
* ``sequence``: one user per line, ``UserID MovieID MovieID ...`` in time order, as SASRec-style
  code ships ML-1M. There is no timestamp, so ``timestamp`` = the item's position in its line
  (0, 1, ...), which keeps RecBole's time ordering and leave-one-out split exact.

``movies.dat`` (``MovieID::Title::Genres``, ISO-8859-1) and ``users.dat``
(``UserID::Gender::Age::Occupation::Zip-code``) found beside the input become ``<name>.item`` and
``<name>.user``. Ids are kept as GroupLens ids (RecBole remaps tokens itself).

Usage::

    python -m dataset_prep.movielens --input ../shared/data/ml-1m --output-dir dataset/ml-1m
    python -m dataset_prep.movielens --input ratings.dat --format ratings --output-dir dataset/ml-1m

Why a plain line parser rather than pyarrow/polars here: MovieLens files have at most 25M lines
(ML-25M), the ``::`` separator is not a single character (pyarrow's CSV reader needs one) and
the sequence format has a variable number of columns; a Python loop converts ML-1M in about two
seconds and reports a bad row with its exact line number. The billion-row converters
(``lfm1b``, ``kuairand``) use pyarrow.
"""

from __future__ import annotations

import argparse
import math
import logging
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from dataset_prep.common import (
    ON_BAD_LINES,
    BadInputError,
    BadLineCounter,
    ConversionSummary,
    atomic_outputs,
    open_text,
    run_cli,
)
from dataset_prep.sequences import numbered_lines, write_sequences

log = logging.getLogger("dataset_prep.movielens")

FORMATS = ("auto", "ratings", "sequence")
SIDE_FILES = {"movies.dat", "users.dat", "README", "readme", "README.txt", "README.md"}
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def sniff_format(path: Path) -> str:
    """``"ratings"`` if the first non-empty line holds ``::``; ``"sequence"`` if it is
    space-separated integers and does not also read as ratings. Anything else raises
    ``ValueError`` asking for ``--format`` (never a silent guess): tab- or comma-separated lines,
    and space-separated lines of exactly 4 integers whose last is a Unix time (a ratings file
    written with spaces, or a user with three items?)."""
    with open_text(path, encoding="latin-1") as f:
        for line in f:
            text = line.lstrip("\ufeff").rstrip("\r\n")
            if not text.strip():
                continue
            if "::" in text:
                return "ratings"
            if "\t" in text or "," in text:
                sep = "tab" if "\t" in text else "comma"
                raise ValueError(
                    f"{path}:1: {sep}-separated line {text[:60]!r}: neither MovieLens ratings "
                    "('UserID::MovieID::Rating::Timestamp') nor a space-separated sequence file "
                    "('UserID MovieID MovieID ...'); convert it to one of them, or pass --format"
                )
            parts = text.split()
            if len(parts) == 4 and all(p.isdigit() for p in parts) and int(parts[3]) >= 10**8:
                raise ValueError(
                    f"{path}:1: {text[:60]!r} reads as a sequence (user and 3 items) and as ratings "
                    "with spaces (the last field looks like a Unix time); pass --format sequence or "
                    "--format ratings"
                )
            return "sequence"
    raise BadInputError(path, 1, "the file is empty")


def find_interactions_file(input_path: Path, fmt: str) -> tuple[Path, str]:
    """Resolve ``--input`` (a file or a directory) to ``(interactions file, format)``.

    In a directory: ``ratings.dat`` if present (unless ``--format sequence``), else the one file
    whose content matches the format asked for; with several candidates and ``--format auto``,
    a sequence file (which holds whole histories) is preferred over a partial ratings file, and
    the choice is logged.
    """
    if not input_path.exists():
        raise FileNotFoundError(f"--input {input_path}: no such file or directory")
    if input_path.is_file():
        if fmt != "auto":
            return input_path, fmt  # asked for: each line is checked against that format
        return input_path, sniff_format(input_path)
    if fmt in ("auto", "ratings") and (input_path / "ratings.dat").is_file():
        return input_path / "ratings.dat", "ratings"
    candidates = sorted(
        p for p in input_path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in SIDE_FILES
        and p.suffix in (".dat", ".txt", ".gz", ".bz2", ".xz", ".csv")
    )
    by_format: dict[str, list[Path]] = {"ratings": [], "sequence": []}
    for p in candidates:
        try:
            by_format[sniff_format(p)].append(p)
        except (ValueError, UnicodeDecodeError):  # not a candidate (BadInputError is a ValueError)
            continue
    order = [fmt] if fmt != "auto" else ["sequence", "ratings"]
    for f in order:
        if len(by_format[f]) == 1:
            others = [p.name for g in by_format.values() for p in g if p != by_format[f][0]]
            if others:
                log.warning("using %s (%s format); also found %s: pass --input <file> to choose",
                            by_format[f][0].name, f, ", ".join(others))
            return by_format[f][0], f
        if len(by_format[f]) > 1:
            names = ", ".join(p.name for p in by_format[f])
            raise ValueError(f"{input_path}: several {f}-format files ({names}); pass one with --input <file>")
    raise FileNotFoundError(
        f"{input_path}: no MovieLens interactions file found (expected ratings.dat with "
        "'UserID::MovieID::Rating::Timestamp' lines, or a 'UserID MovieID MovieID ...' sequence file)"
    )


def _convert_ratings(path: Path, out, bad: BadLineCounter, progress: tqdm) -> tuple[set, set, int]:
    users: set[int] = set()
    items: set[int] = set()
    n = 0
    out.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with open_text(path, encoding="latin-1") as f:
        for line_no, text in numbered_lines(f, path, bad, progress):
            parts = text.split("::")
            if len(parts) != 4:
                bad.bad(path, line_no, f"expected 4 fields 'UserID::MovieID::Rating::Timestamp', got {len(parts)}", text)
                continue
            try:
                user, item, ts = int(parts[0]), int(parts[1]), int(parts[3])
            except ValueError:
                bad.bad(path, line_no, "UserID, MovieID and Timestamp must be integers", text)
                continue
            try:
                rating = float(parts[2])
            except ValueError:
                bad.bad(path, line_no, "Rating must be a number", text)
                continue
            if not math.isfinite(rating):
                bad.bad(path, line_no, "Rating is NaN or infinite", text)
                continue
            if not 0 <= ts < 2**63 or not 0 <= user < 2**63 or not 0 <= item < 2**63:
                bad.bad(path, line_no, "UserID, MovieID and Timestamp must be in [0, 2^63)", text)
                continue
            out.write(f"{user}\t{item}\t{parts[2]}\t{ts}\n")
            users.add(user)
            items.add(item)
            n += 1
    return users, items, n


def _convert_sequences(path: Path, out, bad: BadLineCounter, progress: tqdm) -> tuple[set, set, int]:
    return write_sequences(path, out, bad, progress, integer_ids=True, what="UserID MovieID MovieID ...")


def _side_rows(path: Path, n_fields: int, expected: str, bad: BadLineCounter):
    """Yield the ``::``-separated fields of each non-empty line of movies.dat / users.dat."""
    with open_text(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split("::")
            if len(parts) != n_fields or not parts[0].isdigit():
                bad.bad(path, line_no, f"expected '{expected}'", text)
                continue
            yield parts


def _convert_movies(path: Path, out, bad: BadLineCounter) -> None:
    out.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n")
    for movie, raw_title, raw_genres in _side_rows(path, 3, "MovieID::Title::Genres", bad):
        m = _YEAR.match(raw_title)
        title, year = (m.group(1), m.group(2)) if m else (raw_title, "")
        title = " ".join(title.replace("\t", " ").split())
        genres = " ".join(g.replace(" ", "_") for g in raw_genres.split("|") if g)
        out.write(f"{movie}\t{title}\t{year}\t{genres}\n")


def _convert_users(path: Path, out, bad: BadLineCounter) -> None:
    out.write("user_id:token\tgender:token\tage:token\toccupation:token\tzip_code:token\n")
    for parts in _side_rows(path, 5, "UserID::Gender::Age::Occupation::Zip-code", bad):
        out.write("\t".join(p.strip() for p in parts) + "\n")


def convert(
    input_path: str | Path,
    output_dir: str | Path,
    name: str | None = None,
    fmt: str = "auto",
    on_bad_lines: str = "error",
    force: bool = False,
    progress: bool = True,
) -> ConversionSummary:
    """Convert MovieLens files to ``<output_dir>/<name>.{inter,item,user}``.

    ``name`` defaults to the output folder's name (``dataset/ml-1m`` -> ``ml-1m``), which is what
    RecBole expects with ``data_path: dataset``. Raises :class:`BadInputError` (file and line)
    on a malformed row unless ``on_bad_lines="skip"``; nothing is written on failure, and
    existing outputs are kept unless ``force``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if on_bad_lines not in ON_BAD_LINES:
        raise ValueError(f"on_bad_lines must be one of {ON_BAD_LINES}, got {on_bad_lines!r}")
    start = time.perf_counter()
    input_path, output_dir = Path(input_path), Path(output_dir)
    source, fmt = find_interactions_file(input_path, fmt)
    name = name or output_dir.resolve().name
    folder = input_path if input_path.is_dir() else input_path.parent
    side = [(folder / "movies.dat", output_dir / f"{name}.item", _convert_movies),
            (folder / "users.dat", output_dir / f"{name}.user", _convert_users)]
    side = [s for s in side if s[0].is_file()]
    # .inter last: a reader never sees the interactions without their companions.
    targets = [dst for _, dst, _ in side] + [output_dir / f"{name}.inter"]
    bad = BadLineCounter(on_bad_lines)
    with atomic_outputs(targets, force=force) as tmps:
        for (src, _, fn), tmp in zip(side, tmps):
            with open(tmp, "w", encoding="utf-8") as out:
                fn(src, out, bad)
        bar = tqdm(total=source.stat().st_size, unit="B", unit_scale=True,
                   desc=f"converting {source.name}", disable=not progress)
        with bar, open(tmps[-1], "w", encoding="utf-8", buffering=1 << 20) as out:
            conv = _convert_ratings if fmt == "ratings" else _convert_sequences
            users, items, n = conv(source, out, bad, bar)
        if n == 0:
            raise BadInputError(source, 1, "no valid interaction in the file")
    return ConversionSummary(source, fmt, len(users), len(items), n, bad.summary(),
                             time.perf_counter() - start, targets)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataset_prep.movielens",
        description="Convert MovieLens ratings.dat or a one-user-per-line sequence file "
                    "(+ movies.dat, users.dat) to RecBole atomic files.",
    )
    p.add_argument("--input", required=True, help="ratings.dat, a sequence file, or the folder holding them")
    p.add_argument("--output-dir", required=True, help="e.g. dataset/ml-1m (RecBole's data_path/<dataset>)")
    p.add_argument("--name", default=None, help="dataset name (default: the output folder's name)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="interactions format (default: detected)")
    p.add_argument("--on-bad-lines", default="error", choices=ON_BAD_LINES,
                   help="stop at the first malformed row (default) or skip and count them")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert(args.input, args.output_dir, args.name, args.format,
                                   args.on_bad_lines, args.force, progress=not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
