"""What every converter shares: errors that name file and line, atomic outputs, compressed input,
the one-line summary a conversion prints.

Nothing here knows a dataset format. The converters (``sequences``, ``movielens``, ``lfm1b``, ``kuairand``) read
raw files, validate each row, and write RecBole atomic files through :func:`atomic_outputs`, so
an interrupted or failed run never leaves a partial ``.inter`` that RecBole would load.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

ON_BAD_LINES = ("error", "skip")


class BadInputError(ValueError):
    """A malformed input row. The message names the file and the 1-based line number."""

    def __init__(self, path: str | os.PathLike, line_no: int, reason: str, line: str | None = None):
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        shown = ""
        if line is not None:
            text = line if len(line) <= 120 else line[:117] + "..."
            shown = f": {text!r}"
        super().__init__(
            f"{self.path}:{line_no}: {reason}{shown}\n"
            "Fix the file, or pass --on-bad-lines skip to drop such rows (they are counted)."
        )


@dataclass
class BadLineCounter:
    """Counts skipped rows per reason (``--on-bad-lines skip``) and keeps the first few."""

    policy: str = "error"
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ON_BAD_LINES:
            raise ValueError(f"on_bad_lines must be one of {ON_BAD_LINES}, got {self.policy!r}")

    def bad(self, path: str | os.PathLike, line_no: int, reason: str, line: str | None = None) -> None:
        """Raise :class:`BadInputError` (policy ``error``) or count the row (policy ``skip``)."""
        if self.policy == "error":
            raise BadInputError(path, line_no, reason, line)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{path}:{line_no}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "bad lines skipped: 0"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"bad lines skipped: {self.total} ({parts}); first: " + "; ".join(self.examples)


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> IO[str]:
    """Open a text file for reading, decompressing ``.gz``, ``.bz2`` and ``.xz`` on the fly.

    Lines keep their ending (``newline=""``) so a converter can tell CRLF and a truncated last
    line (no newline) apart from a good line.
    """
    path = os.fspath(path)
    if path.endswith(".gz"):
        raw: IO[bytes] = gzip.open(path, "rb")
    elif path.endswith(".bz2"):
        raw = bz2.open(path, "rb")
    elif path.endswith(".xz"):
        raw = lzma.open(path, "rb")
    else:
        raw = open(path, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def check_outputs(paths: list[Path], force: bool) -> None:
    """Refuse to overwrite existing outputs unless ``force``; the message names the files."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(
            "refusing to overwrite existing output file(s): " + ", ".join(existing)
            + "\nPass --force to replace them."
        )


@contextlib.contextmanager
def atomic_outputs(paths: list[Path], force: bool = False) -> Iterator[list[Path]]:
    """Yield temporary paths to write; on success rename each onto its final path.

    The temporaries live beside the targets (same file system, so the rename is atomic) and are
    renamed in the given order: put the ``.inter`` file last so that a reader never sees it
    without its companions. On any exception every temporary is deleted and no target is
    touched.
    """
    check_outputs(paths, force)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    try:
        yield tmps
        for tmp, final in zip(tmps, paths):
            if tmp.exists():
                os.replace(tmp, final)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@dataclass
class ConversionSummary:
    """What a conversion wrote; ``str()`` is the one-line report the CLI prints."""

    source: Path
    fmt: str
    users: int
    items: int
    interactions: int
    skipped: str
    seconds: float
    outputs: list[Path]

    def __str__(self) -> str:
        files = ", ".join(str(p) for p in self.outputs)
        return (
            f"{self.source} ({self.fmt}): {self.interactions:,} interactions, {self.users:,} users, "
            f"{self.items:,} items in {self.seconds:.1f} s ({human_rate(self.interactions, self.seconds)}); "
            f"{self.skipped}; wrote {files}"
        )


def human_rate(rows: int, seconds: float) -> str:
    """``"1.23M rows/s"``-style rate for summaries."""
    rate = rows / max(seconds, 1e-9)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.2f}{unit} rows/s"
    return f"{rate:.0f} rows/s"


def run_cli(convert: Callable[[], object]) -> int:
    """Run a converter for a CLI: print its summary (exit 0), or a one-line error (exit 2) for
    the errors a user can meet (bad input, existing outputs, missing files, bad options)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = convert()
    except (BadInputError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0
