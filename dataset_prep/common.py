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
import zlib
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


class InputFileError(ValueError):
    """An input file that cannot be read as what its name says (compression, encoding)."""


# file name ending -> (codec, magic bytes the compressed file starts with)
COMPRESSION_MAGIC = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bzip2", b"BZh"),
    ".xz": ("xz", b"\xfd7zXZ\x00"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".lz4": ("lz4", b"\x04\x22\x4d\x18"),
}


def check_compression(path: str | os.PathLike) -> str | None:
    """The codec ``path``'s name asks for (None: plain), after checking the file starts like one.

    Raises :class:`InputFileError` naming the file when a ``.gz`` (etc.) is not such a file."""
    path = Path(path)
    spec = COMPRESSION_MAGIC.get(path.suffix)
    if spec is None:
        return None
    codec, magic = spec
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        raise InputFileError(
            f"{path}: not a {codec} file (its name ends in {path.suffix}, its first bytes are {head!r}); "
            f"rename it if it is not compressed"
        )
    return codec


class _ReadErrors(io.RawIOBase):
    """A binary stream whose read errors (truncated or corrupt compressed data) become
    :class:`InputFileError` naming the file."""

    def __init__(self, raw: IO[bytes], path: str, codec: str | None):
        self._raw, self._path, self._codec = raw, path, codec

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._raw.read(len(buffer))
        except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
            what = f"{self._codec} data" if self._codec else "the file"
            raise InputFileError(f"{self._path}: {what} is truncated or corrupt ({exc})") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> IO[str]:
    """Open a text file for reading, decompressing ``.gz``, ``.bz2`` and ``.xz`` on the fly.

    Lines keep their ending (``newline=""``) so a converter can tell CRLF and a truncated last
    line (no newline) apart from a good line. A file that is not what its name says, and
    truncated or corrupt compressed data, raise :class:`InputFileError` naming the file.
    """
    codec = check_compression(path)
    path = os.fspath(path)
    if codec == "gzip":
        raw: IO[bytes] = gzip.open(path, "rb")
    elif codec == "bzip2":
        raw = bz2.open(path, "rb")
    elif codec == "xz":
        raw = lzma.open(path, "rb")
    elif codec is None:
        raw = open(path, "rb")
    else:
        raise InputFileError(f"{path}: {codec} input is read by the event-log converters only; decompress it first")
    return io.TextIOWrapper(io.BufferedReader(_ReadErrors(raw, path, codec), 1 << 20), encoding=encoding, newline="")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files in ``folder`` whose process is gone (a run killed
    while writing) and return them; other processes' live temporaries are kept."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


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
    tmps = check_writable(paths)
    try:
        yield tmps
        for tmp, final in zip(tmps, paths):
            if tmp.exists():
                os.replace(tmp, final)
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def check_writable(paths: list[Path]) -> list[Path]:
    """Create the folders of ``paths``, remove temporaries of killed runs there, and create each
    path's (empty) temporary ``.<name>.tmp-<pid>``: the proof, before any input is read, that the
    outputs can be written. Returns the temporaries; :class:`InputFileError` names the folder."""
    tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    for folder in dict.fromkeys(p.parent for p in paths):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"output folder {folder} cannot be created: {exc.strerror}") from None
        remove_stale_temporaries(folder)
    try:
        for tmp in tmps:
            tmp.touch()
    except OSError as exc:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise InputFileError(f"output folder {tmps[0].parent} is not writable: {exc.strerror}") from None
    return tmps


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
