"""Streaming event logs -> per-user windows -> RecBole atomic files (LFM-1b, KuaiRand).

Engine: pyarrow. Its CSV parser is multi-threaded C++ that releases the GIL, its input streams
decompress gzip/bz2/zstd on the fly, and it is already a dependency (Ray Tune). polars and duckdb
parse as fast, but neither tells which *line* of a file was malformed, and a converter for a
billion rows must say exactly that. So the reader here cuts the (decompressed) stream into
blocks of whole lines itself, counts lines, and hands each clean block to pyarrow (the fast
path, ~all blocks). A block that pyarrow rejects, or that holds a lone carriage return (CRLF line ends are fine), an empty line
or a negative value, is re-read line by line in Python to name the bad line (file and 1-based
line number) and either raise or skip it (``--on-bad-lines skip``; counted in the summary).

Memory stays bounded whatever the input size: parsed blocks go to
:class:`~dataset_prep.keeper.PerUserKeeper`, which holds at most ``max_len`` events (plus slack)
per user, and at most ``num_users`` users.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from dataset_prep.common import BadLineCounter, InputFileError, atomic_outputs, check_compression, human_rate
from dataset_prep.keeper import PerUserKeeper

BLOCK_BYTES = 64 << 20
WRITE_ROWS = 4_000_000


@dataclass
class Layout:
    """Where the three fields are in a line.

    ``names``: every column name in file order (from the header, or fixed when ``header`` is
    False); ``user``, ``item``, ``time``: the names to read; ``filters``: ``{column: value}`` rows
    must match (e.g. ``{"is_click": 1}``), integer columns.
    """

    names: list[str]
    user: str
    item: str
    time: str
    delimiter: str = "\t"
    header: bool = False
    filters: dict[str, int] = field(default_factory=dict)

    @property
    def needed(self) -> list[str]:
        return [self.user, self.item, self.time, *self.filters]


def header_of(path: Path, delimiter: str) -> list[str]:
    """Column names from the file's first line (BOM and CR stripped)."""
    raw, stream = _open_stream(path)
    with raw, stream:
        head = _read_header_line(stream, path)
    if b"\0" in head:
        raise ValueError(f"{path}:1: the header line holds NUL bytes: a binary file, not a CSV log")
    try:
        line = head.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise ValueError(f"{path}:1: the header line is not UTF-8 text (a binary file?)") from None
    if not line:
        raise ValueError(f"{path}:1: expected a header line, found an empty line")
    return [c.strip() for c in line.split(delimiter)]


def _slow_block(block: bytes, first_line: int, path: Path, layout: Layout,
                bad: BadLineCounter) -> dict[str, np.ndarray]:
    """Parse ``block`` line by line, reporting each bad line (exact file line number)."""
    want = [layout.names.index(c) for c in layout.needed]
    ncol = len(layout.names)
    cols: list[list[int]] = [[] for _ in want]
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for k, raw in enumerate(lines):
        line_no = first_line + k
        if raw.endswith(b"\r"):  # CRLF line ending (RFC 4180 CSV)
            raw = raw[:-1]
        text = raw.decode("utf-8", errors="replace")
        if b"\r" in raw:
            bad.bad(path, line_no, "carriage return inside a line", text)
            continue
        if b"\0" in raw:
            bad.bad(path, line_no, "binary data (NUL bytes) in a text line", text)
            continue
        if not raw.strip():
            bad.bad(path, line_no, "empty line")
            continue
        parts = raw.split(layout.delimiter.encode())
        if len(parts) != ncol:
            bad.bad(path, line_no, f"expected {ncol} columns, got {len(parts)}", text)
            continue
        try:
            values = [int(parts[i]) for i in want]
        except ValueError:
            names = ", ".join(layout.needed)
            bad.bad(path, line_no, f"non-integer value in {names} (a header line in the middle?)", text)
            continue
        if min(values[:3]) < 0:
            bad.bad(path, line_no, "negative id or timestamp", text)
            continue
        if max(values) >= 2**63:
            bad.bad(path, line_no, "value beyond the int64 range", text)
            continue
        for c, v in zip(cols, values):
            c.append(v)
    return {name: np.asarray(c, dtype=np.int64) for name, c in zip(layout.needed, cols)}


def _fast_block(block, layout: Layout) -> tuple[dict[str, np.ndarray], int] | None:
    """Parse a block of whole lines (bytes or a zero-copy memoryview) with pyarrow: the columns
    and the number of lines, or ``None`` if anything about it is off (then the slow path).

    An empty line or a wrong column count fails pyarrow's parse (every line must have all
    columns, none may be empty), so the only check here is for carriage returns, which pyarrow
    would accept silently as line ends."""
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=layout.names, use_threads=True,
                                           block_size=8 << 20),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, ignore_empty_lines=False,
                                              quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.int64() for c in layout.needed},
                include_columns=layout.needed, strings_can_be_null=False,
                null_values=[], quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    out = {c: table.column(c).to_numpy() for c in layout.needed}
    if any(v.size and v.min() < 0 for v in (out[layout.user], out[layout.item], out[layout.time])):
        return None
    return out, table.num_rows


CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


def _open_stream(path: Path) -> tuple[pa.NativeFile, pa.NativeFile]:
    """``(raw file, content stream)``: the stream decompresses by extension (gzip, bz2, zstd,
    lz4) in pyarrow's C++; the raw file's position drives the progress bar. A file that does not
    start like its extension's codec raises :class:`~dataset_prep.common.InputFileError`."""
    check_compression(path)
    raw = pa.OSFile(str(path), "rb")
    codec = CODECS.get(path.suffix)
    return raw, (pa.CompressedInputStream(raw, codec) if codec else raw)


def _read(stream: pa.NativeFile, n: int, path: Path) -> bytes:
    """``stream.read(n)``; truncated or corrupt compressed data raise an error naming the file."""
    try:
        return stream.read(n)
    except (OSError, pa.ArrowInvalid) as exc:
        codec = CODECS.get(path.suffix)
        what = f"{codec} data" if codec else "the file"
        raise InputFileError(f"{path}: {what} is truncated or corrupt ({exc})") from None


def _read_header_line(stream: pa.NativeFile, path: Path) -> bytes:
    out = bytearray()
    while True:
        c = _read(stream, 1, path)
        if not c or c == b"\n":
            return bytes(out)
        out += c


def read_events(paths: Sequence[Path], layout_for, bad: BadLineCounter,
                progress: bool = True, block_bytes: int = BLOCK_BYTES,
                counter: dict | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(user, item, time)`` int64 arrays, block by block, over all files in order.

    ``layout_for(path)`` gives each file's :class:`Layout` (the header may differ per file).
    Rows failing ``layout.filters`` are valid but not wanted: dropped silently. ``counter``, if
    given, receives ``rows`` (good rows parsed, before filters).
    """
    total = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading", disable=not progress,
               smoothing=0.1)
    counter = counter if counter is not None else {}
    counter.setdefault("rows", 0)
    started = time.perf_counter()
    with bar:
        for path in paths:
            layout = layout_for(path)
            raw, stream = _open_stream(path)
            with raw, stream:
                line_no = 1  # 1-based number of the next block's first line
                if layout.header:
                    _read_header_line(stream, path)
                    line_no = 2
                pending, reported = b"", 0

                def parse(block, first: int, last: int) -> Iterator[tuple[np.ndarray, ...]]:
                    """Lines block[first:last] (bytes); fast path unless a CR is in there."""
                    nonlocal line_no
                    parsed = None
                    # pyarrow ends lines at \r\n as at \n; a lone \r (which it would also take
                    # as a line end, shifting line numbers) sends the block to the slow path
                    if block.count(b"\r", first, last) == block.count(b"\r\n", first, last):
                        # a zero-copy view of the block: no 64 MiB copy per block
                        parsed = _fast_block(memoryview(block)[first:last], layout)
                    if parsed is None:
                        cols = _slow_block(block[first:last], line_no, path, layout, bad)
                        lines = block.count(b"\n", first, last)
                    else:
                        cols, lines = parsed
                    line_no += lines
                    u, i, t = cols[layout.user], cols[layout.item], cols[layout.time]
                    counter["rows"] += len(u)
                    keep = None
                    for col, value in layout.filters.items():
                        hit = cols[col] == value
                        keep = hit if keep is None else keep & hit
                    if keep is not None:
                        u, i, t = u[keep], i[keep], t[keep]
                    if len(u):
                        yield u, i, t

                while True:
                    chunk = _read(stream, block_bytes, path)
                    if not chunk:
                        if pending:
                            bad.bad(path, line_no, "truncated last line (no newline at end of file)",
                                    pending.decode("utf-8", "replace"))
                        break
                    first, last = chunk.find(b"\n"), chunk.rfind(b"\n")
                    if first < 0:  # no line end in this chunk: a very long line
                        pending += chunk
                        continue
                    # the line cut at the previous chunk's end, completed; then this chunk's
                    # whole lines in place; its cut last line waits for the next chunk
                    head = pending + chunk[: first + 1]
                    yield from parse(head, 0, len(head))
                    if last > first:
                        yield from parse(chunk, first + 1, last + 1)
                    pending = chunk[last + 1:]
                    pos = raw.tell()
                    bar.update(pos - reported)
                    reported = pos
                    bar.set_postfix_str(human_rate(counter["rows"], time.perf_counter() - started),
                                        refresh=False)
                bar.update(path.stat().st_size - reported)


@dataclass
class EventSummary:
    """What a conversion read and wrote; ``str()`` is the CLI's report."""

    rows_read: int
    users: int
    items: int
    rows_written: int
    seconds: float
    skipped: str
    outputs: list[Path]
    peak_rss_mib: float

    def __str__(self) -> str:
        return (f"read {self.rows_read:,} rows in {self.seconds:.1f} s ({human_rate(self.rows_read, self.seconds)}), "
                f"wrote {self.rows_written:,} rows ({self.users:,} users, {self.items:,} items); "
                f"{self.skipped}; peak RSS {self.peak_rss_mib:.0f} MiB; files: "
                + ", ".join(str(p) for p in self.outputs))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


DATASET_YAML = """\
# Written by dataset_prep ({source}). Run, for example:
#   python run_recbole.py --model=MambaRec --dataset={name} --data_path={data_path} --config_files={yaml}
USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
TIME_FIELD: timestamp
load_col:
  inter: [user_id, item_id, timestamp]
MAX_ITEM_LIST_LENGTH: {max_len}        # each user keeps {keep} {max_len} events
user_inter_num_interval: "[3,inf)"     # leave-one-out needs a train, a valid and a test event
item_inter_num_interval: "[0,inf)"
# The original paper's protocol: leave-one-out by time, 100 uniformly sampled negatives.
eval_args:
  split: {{LS: valid_and_test}}
  order: TO
  group_by: user
  mode: uni100
"""


def write_dataset(user: np.ndarray, item: np.ndarray, ts: np.ndarray, output_dir: Path, name: str,
                  force: bool, yaml_fields: dict) -> list[Path]:
    """Write ``<name>.inter`` (dense ids, sorted by user and time), the id maps and ``<name>.yaml``.

    ``user`` must be sorted (it is: :meth:`PerUserKeeper.result`). Dense ids are 1..n in the
    order of the raw ids; the maps ``<name>.user_map.tsv`` / ``<name>.item_map.tsv`` hold
    ``raw_id<TAB>id`` per line. Everything is written atomically, the ``.inter`` last.
    """
    new_user = np.r_[True, user[1:] != user[:-1]]
    raw_users, user_idx = user[new_user], np.cumsum(new_user) - 1
    item_idx, raw_items = pd.factorize(item, sort=True)  # hash-based: O(n), not a sort of n
    paths = [output_dir / f"{name}.user_map.tsv", output_dir / f"{name}.item_map.tsv",
             output_dir / f"{name}.yaml", output_dir / f"{name}.inter"]
    opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with atomic_outputs(paths, force=force) as (umap, imap, yml, inter):
        for tmp, raw in ((umap, raw_users), (imap, raw_items)):
            with open(tmp, "wb") as f:
                f.write(b"raw_id\tid\n")
                pacsv.write_csv(pa.table({"raw": raw, "id": np.arange(1, len(raw) + 1)}), f, opts)
        yml.write_text(DATASET_YAML.format(name=name, yaml=paths[2], data_path=output_dir.parent,
                                           **yaml_fields))
        with open(inter, "wb") as f:
            f.write(b"user_id:token\titem_id:token\ttimestamp:float\n")
            for lo in range(0, len(ts), WRITE_ROWS):  # slices: bounded temporaries
                hi = lo + WRITE_ROWS
                pacsv.write_csv(pa.table({"u": user_idx[lo:hi] + 1, "i": item_idx[lo:hi] + 1,
                                          "t": ts[lo:hi]}), f, opts)
    return paths, len(raw_users), len(raw_items)


def add_event_arguments(p, max_len: int, keep: str) -> None:
    """The flags every event-log converter shares (defaults: ``max_len``, ``keep``)."""
    from dataset_prep.common import ON_BAD_LINES

    p.add_argument("--name", default=None, help="dataset name (default: the output folder's name)")
    p.add_argument("--max-len", type=int, default=max_len, help=f"events kept per user (default {max_len})")
    p.add_argument("--num-users", type=int, default=None, help="keep the N users with the smallest ids")
    p.add_argument("--keep", choices=("first", "last"), default=keep, help=f"which events of a user (default {keep})")
    p.add_argument("--on-bad-lines", choices=ON_BAD_LINES, default="error",
                   help="stop at the first malformed row (default) or skip and count them")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def ensure_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve input paths; a clear error for a missing one."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"--input {path}: no such file")
        out.append(path)
    return out


def convert_events(paths: Sequence[Path], layout_for, output_dir: str | os.PathLike, name: str | None,
                   max_len: int, keep: str, num_users: int | None, on_bad_lines: str, force: bool,
                   progress: bool, source: str, block_bytes: int = BLOCK_BYTES) -> EventSummary:
    """Read ``paths``, keep ``max_len`` events per user, and write the dataset (see the module doc).

    Raises :class:`~dataset_prep.common.BadInputError` on the first bad line (``on_bad_lines``
    ``error``); nothing is written then, and existing outputs are kept unless ``force``.
    """
    from dataset_prep.common import check_outputs, check_writable

    if max_len < 3:
        raise ValueError(f"--max-len must be at least 3, got {max_len}: the dataset's leave-one-out split "
                         "needs a train, a validation and a test event per user (the YAML keeps users "
                         "with 3 or more)")
    output_dir = Path(output_dir)
    name = name or output_dir.resolve().name
    targets = [output_dir / f"{name}.{ext}" for ext in ("user_map.tsv", "item_map.tsv", "yaml", "inter")]
    check_outputs(targets, force)  # fail before reading a billion rows, not after
    for tmp in check_writable(targets):  # the folder takes files: proved now, written at the end
        tmp.unlink()
    start = time.perf_counter()
    bad = BadLineCounter(on_bad_lines)
    keeper = PerUserKeeper(max_len, keep, num_users)
    counter: dict = {}
    for u, i, t in read_events(paths, layout_for, bad, progress=progress, block_bytes=block_bytes,
                               counter=counter):
        keeper.add(u, i, t)
    user, item, ts = keeper.result()
    del keeper  # its per-user buffers, before the output's temporaries
    if len(user) == 0:
        raise ValueError(f"no events left to write from {', '.join(map(str, paths))} "
                         "(empty input, or every row filtered out)")
    outputs, n_users, n_items = write_dataset(user, item, ts, output_dir, name, force,
                                              {"source": source, "max_len": max_len, "keep": keep})
    return EventSummary(counter["rows"], n_users, n_items, len(user),
                        time.perf_counter() - start, bad.summary(), outputs, peak_rss_mib())
