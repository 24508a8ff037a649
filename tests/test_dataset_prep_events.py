"""dataset_prep.lfm1b / kuairand: exact outputs on hand-made files, every bad-line case,
atomicity, compressed input, and a RecBole run on a converted file (uni100, the original paper's protocol)."""

from __future__ import annotations

import bz2
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data_dir
from dataset_prep import kuairand, lfm1b
from dataset_prep.common import BadInputError
from dataset_prep.keeper import PerUserKeeper
from dataset_prep.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
KUAIRAND_HEAD = (shared_data_dir() or Path("/nonexistent")) / "kuairand" / "log_random_4_22_to_5_08_1k.head226.csv"
needs_kuairand = pytest.mark.skipif(not KUAIRAND_HEAD.is_file(), reason="../shared/data/kuairand not present")


def _inter(out: Path, name: str) -> list[tuple[int, int, int]]:
    lines = (out / f"{name}.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    return [tuple(int(x) for x in ln.split("\t")) for ln in lines[1:]]


def _map(out: Path, name: str, kind: str) -> dict[int, int]:
    lines = (out / f"{name}.{kind}_map.tsv").read_text().splitlines()
    assert lines[0] == "raw_id\tid"
    return {int(a): int(b) for a, b in (ln.split("\t") for ln in lines[1:])}


# user artist album track ts; user 50 out of time order, user 7 has 4 events
LFM = """7\t1\t1\t900\t40
50\t2\t2\t901\t20
7\t1\t1\t902\t10
50\t2\t2\t903\t10
7\t1\t1\t904\t30
9\t3\t3\t900\t5
7\t1\t1\t905\t20
"""


@pytest.mark.parametrize("keep,expected", [
    ("last", {7: [(905, 20), (904, 30), (900, 40)], 9: [(900, 5)],
              50: [(903, 10), (901, 20)]}),
    ("first", {7: [(902, 10), (905, 20), (904, 30)], 9: [(900, 5)], 50: [(903, 10), (901, 20)]}),
])
def test_lfm1b_keep_order_and_remap(tmp_path, keep, expected):
    src = tmp_path / "LFM-1b_LEs.txt"
    src.write_text(LFM)
    out = tmp_path / "out" / "lfm"
    assert lfm1b.main(["--input", str(src), "--output-dir", str(out), "--max-len", "3", "--keep", keep,
                       "--no-progress"]) == 0
    users, items = _map(out, "lfm", "user"), _map(out, "lfm", "item")
    assert users == {7: 1, 9: 2, 50: 3}  # dense, in raw-id order
    kept = sorted({i for evs in expected.values() for i, _ in evs})
    assert items == {raw: k + 1 for k, raw in enumerate(kept)}  # only kept items, raw-id order
    inv_u, inv_i = {v: k for k, v in users.items()}, {v: k for k, v in items.items()}
    got: dict[int, list] = {}
    for u, i, t in _inter(out, "lfm"):
        got.setdefault(inv_u[u], []).append((inv_i[i], t))
    assert got == expected  # sorted by time within each user, max 3 per user
    yaml_text = (out / "lfm.yaml").read_text()
    assert "MAX_ITEM_LIST_LENGTH: 3" in yaml_text and "mode: uni100" in yaml_text


def _kept_by_python(user, item, ts, max_len, keep, num_users):
    """The reference: every row held in Python, sorted by (time, arrival) per user."""
    events: dict[int, list] = {}
    for a, b, c, idx in zip(user.tolist(), item.tolist(), ts.tolist(), range(len(user))):
        events.setdefault(a, []).append((c, idx, b))
    out = []
    for a in sorted(events)[: num_users or None]:
        rows = sorted(events[a])
        rows = rows[-max_len:] if keep == "last" else rows[:max_len]
        out += [(a, b, c) for c, _, b in rows]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_keeper_matches_a_full_sort(seed):
    """Random streams: ties, rows in and out of time order, a user cap that evicts users seen
    earlier, buffers cut many times (small slack), blocks of odd sizes, ids on both sides of
    the direct id table's limit."""
    rng = np.random.default_rng(seed)
    n, max_len = int(rng.integers(5_000, 40_000)), int(rng.integers(1, 30))
    keep = ("last", "first")[seed % 2]
    num_users = (None, 60)[seed % 4 >= 2]
    user = rng.integers(0, 300, n)
    if seed % 3 == 0:  # ids past the direct table (hashed), mixed with small ones in one stream
        user[user % 2 == 0] *= 10**9
    item = rng.integers(0, 10_000, n)
    ts = rng.integers(0, (10, 10**6, 2**40)[seed % 3], n)
    if seed in (1, 6):
        ts = np.sort(ts)  # time-ordered arrival: the cut's sort is skipped
    k = PerUserKeeper(max_len=max_len, keep=keep, num_users=num_users, slack=int(rng.integers(1, 20)))
    block = int(rng.integers(1, 3_000))
    for s in range(0, n, block):
        k.add(user[s:s + block], item[s:s + block], ts[s:s + block])
    got = list(zip(*(a.tolist() for a in k.result())))
    assert got == _kept_by_python(user, item, ts, max_len, keep, num_users)


@pytest.mark.parametrize("text,line_no,reason", [
    ("1\t2\t3\t4\t5\n1\t2\t3\t4\n", 2, "expected 5 columns, got 4"),
    ("1\t2\t3\t4\t5\nx\t2\t3\t4\t6\n", 2, "non-integer value"),
    ("1\t2\t3\t4\t5\n1\t2\t3\t4\tabc\n", 2, "non-integer value"),
    ("1\t2\t3\t4\t5\n1\t2\t3\t4\t-6\n", 2, "negative id or timestamp"),
    ("1\t2\t3\t4\t5\n\n1\t2\t3\t4\t6\n", 2, "empty line"),
    ("1\t2\t3\t4\t5\n1\t2\r\t3\t4\t6\n", 2, "carriage return inside a line"),
    ("1\t2\t3\t4\t5\n1\t2\t3\t4\t99999999999999999999\n", 2, "beyond the int64 range"),
    ("1\t2\t3\t4\t5\n1\x00\t2\t3\t4\t6\n", 2, "NUL bytes"),
    ("1\t2\t3\t4\t5\nuser\tartist\talbum\ttrack\tts\n", 2, "header line in the middle"),
    ("1\t2\t3\t4\t5\n1\t2\t3\t4\t6", 2, "truncated last line"),
])
def test_bad_lines_named_and_nothing_written(tmp_path, text, line_no, reason):
    src = tmp_path / "events.txt"
    src.write_bytes(text.encode())
    out = tmp_path / "out" / "lfm"
    with pytest.raises(BadInputError, match=reason) as err:
        lfm1b.convert_events([src], lambda p: lfm1b.layout(), out, None, 10, "last", None, "error",
                             False, False, "test")
    assert err.value.line_no == line_no and err.value.path == str(src)
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_line_in_a_later_block_has_the_right_line_number(tmp_path):
    good = "".join(f"{u}\t1\t1\t{u + 10}\t{u}\n" for u in range(5000))
    src = tmp_path / "events.txt"
    src.write_text(good + "1\t2\n" + good)
    with pytest.raises(BadInputError) as err:
        lfm1b.convert_events([src], lambda p: lfm1b.layout(), tmp_path / "o" / "x", None, 10, "last",
                             None, "error", False, False, "test", block_bytes=4096)
    assert err.value.line_no == 5001


@pytest.mark.parametrize("block_bytes", [5, 64, 4096])
def test_block_size_changes_nothing(tmp_path, block_bytes):
    """Lines cut at every possible place between reads (a block smaller than a line included):
    the same rows, and a bad line still named exactly, under --on-bad-lines skip."""
    src = tmp_path / "events.txt"
    generate(src, "lfm1b", rows=3_000, users=40, items=500, seed=1, progress=False)
    lines = src.read_text().splitlines(keepends=True)
    lines.insert(1234, "7\t1\t1\n")
    src.write_text("".join(lines))
    outs = {}
    for size in (1 << 20, block_bytes):
        out = tmp_path / f"o{size}" / "x"
        summary = lfm1b.convert_events([src], lambda p: lfm1b.layout(), out, None, 25, "last", None,
                                       "skip", False, False, "test", block_bytes=size)
        assert summary.skipped.startswith("bad lines skipped: 1 ") and ":1235:" in summary.skipped, summary.skipped
        outs[size] = (out / "x.inter").read_text()
    assert outs[block_bytes] == outs[1 << 20]


def test_skip_counts_every_kind(tmp_path):
    src = tmp_path / "events.txt"
    src.write_bytes(b"1\t2\t3\t4\t5\n\n1\t2\n1\t2\t3\r\t4\t6\n2\t2\t3\t4\t7\n2\t9\t9\t9")
    out = tmp_path / "out" / "lfm"
    summary = lfm1b.convert_events([src], lambda p: lfm1b.layout(), out, None, 10, "last", None,
                                   "skip", False, False, "test")
    assert summary.rows_read == 2 and summary.rows_written == 2
    assert "bad lines skipped: 4" in summary.skipped
    for reason in ("empty line", "expected 5 columns", "carriage return", "truncated"):
        assert reason in summary.skipped


def test_crlf_line_ends_give_the_same_dataset(tmp_path):
    """RFC 4180 CSV ends lines with CRLF: read as LF, on the fast and the line-by-line path."""
    plain = generate(tmp_path / "ev.txt", "lfm1b", rows=5_000, users=40, items=300, seed=3, progress=False)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(plain.read_bytes().replace(b"\n", b"\r\n"))
    outs = []
    for src, block in ((plain, 1 << 20), (crlf, 1 << 20), (crlf, 4096)):
        out = tmp_path / f"o-{src.stem}-{block}" / "lfm"
        lfm1b.convert_events([src], lambda p: lfm1b.layout(), out, None, 20, "last", None,
                             "error", False, False, "test", block_bytes=block)
        outs.append((out / "lfm.inter").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_compressed_inputs_read_directly(tmp_path):
    plain = generate(tmp_path / "ev.txt", "lfm1b", rows=20_000, users=50, items=500, seed=1, progress=False)
    data = plain.read_bytes()
    (tmp_path / "ev.txt.gz").write_bytes(gzip.compress(data))
    (tmp_path / "ev.txt.bz2").write_bytes(bz2.compress(data))
    outs = []
    for name in ("ev.txt", "ev.txt.gz", "ev.txt.bz2"):
        out = tmp_path / name.replace(".", "_") / "d"
        assert lfm1b.main(["--input", str(tmp_path / name), "--output-dir", str(out), "--max-len", "100",
                           "--no-progress"]) == 0
        outs.append((out / "d.inter").read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0].splitlines()) == 1 + 50 * 100


def test_refuses_overwrite_before_reading(tmp_path, capsys):
    src = tmp_path / "e.txt"
    src.write_text(LFM)
    out = tmp_path / "o" / "d"
    out.mkdir(parents=True)
    (out / "d.inter").write_text("keep me")
    assert lfm1b.main(["--input", str(src), "--output-dir", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "d.inter").read_text() == "keep me"


def test_interrupted_run_leaves_no_partial_output(tmp_path):
    src = generate(tmp_path / "big.txt", "lfm1b", rows=3_000_000, users=2000, items=10**5, progress=False)
    out = tmp_path / "out" / "big"
    proc = subprocess.Popen([sys.executable, "-m", "dataset_prep.lfm1b", "--input", str(src),
                             "--output-dir", str(out), "--no-progress"], cwd=ROOT)
    # kill it in the middle of writing: as soon as its first temporary output exists
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(p.name.startswith(".") for p in out.iterdir()):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the converter finished before it could be killed"
    # nothing RecBole would load: at most hidden temporaries (the one seen may already be gone:
    # the kill lands a moment after it was observed)
    leftovers = [p.name for p in out.iterdir()]
    assert all(name.startswith(".") for name in leftovers), leftovers
    assert not (out / "big.inter").exists()


@needs_kuairand
def test_kuairand_real_rows_and_clicked_only(tmp_path):
    out = tmp_path / "kr" / "kr"
    assert kuairand.main(["--input", str(KUAIRAND_HEAD), "--output-dir", str(out), "--max-len", "20",
                          "--no-progress"]) == 0
    rows = _inter(out, "kr")
    users = _map(out, "kr", "user")
    assert set(users) == {0, 1, 2, 3, 4}
    assert all(sum(1 for r in rows if r[0] == u) <= 20 for u in users.values())
    first = rows[0]
    assert _map(out, "kr", "item")[5543] == first[1] and first[2] == 1651314030792  # user 0's first row
    clicked = tmp_path / "krc" / "krc"
    assert kuairand.main(["--input", str(KUAIRAND_HEAD), "--output-dir", str(clicked), "--clicked-only",
                          "--max-len", "1000", "--no-progress"]) == 0
    lines = KUAIRAND_HEAD.read_text().splitlines()[1:]
    assert len(_inter(clicked, "krc")) == sum(1 for ln in lines if ln.split(",")[5] == "1")


def test_kuairand_missing_column_is_clear(tmp_path, capsys):
    bad = tmp_path / "x.csv"
    bad.write_text("user_id,item,time_ms\n1,2,3\n")
    assert kuairand.main(["--input", str(bad), "--output-dir", str(tmp_path / "o" / "x"), "--no-progress"]) == 2
    assert "lacks video_id" in capsys.readouterr().err


@pytest.mark.slow
def test_recbole_runs_mambarec_on_converted_file_uni100(tmp_path):
    src = generate(tmp_path / "kr.csv", "kuairand", rows=40_000, users=200, items=3_000, seed=3, progress=False)
    data = tmp_path / "dataset"
    assert kuairand.main(["--input", str(src), "--output-dir", str(data / "kr-50"), "--max-len", "50",
                          "--no-progress"]) == 0
    yaml_file = data / "kr-50" / "kr-50.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), "--model=MambaRec", "--dataset=kr-50",
                          f"--data_path={data}", f"--config_files={yaml_file}", "--epochs=1",
                          "--hidden_size=16", "--d_state=8", f"--checkpoint_dir={tmp_path / 'saved'}",
                          "--show_progress=False"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "uni100" in log and "test result" in log


def test_synthetic_sessions_shape_and_conversion(tmp_path):
    """The sessions shape: every user exactly N events in time order, seeded, consecutive events
    mostly from one album, many distinct items; the LFM-1b converter reads it as it is."""
    src = generate(tmp_path / "s.txt", "lfm1b", users=30, items=200_000, seed=4, progress=False,
                   events_per_user=120, session_mean=10)
    again = generate(tmp_path / "s2.txt", "lfm1b", users=30, items=200_000, seed=4, progress=False,
                     events_per_user=120, session_mean=10)
    assert src.read_bytes() == again.read_bytes()
    rows = np.loadtxt(src, dtype=np.int64).reshape(-1, 5)
    assert rows.shape == (30 * 120, 5)
    user, album, track, ts = rows[:, 0], rows[:, 2], rows[:, 3], rows[:, 4]
    assert (np.bincount(user) == 120).all() and (np.diff(user) >= 0).all()
    same_user = np.diff(user) == 0
    assert (np.diff(ts)[same_user] > 0).all()
    assert (track // 10 == album).all() and track.max() < 200_000
    same_album = (np.diff(album) == 0)[same_user].mean()
    assert 0.8 < same_album < 0.97  # sessions of ~10 events: ~1 change in 10
    assert len(np.unique(track)) > 500  # ~360 sessions, most on albums no other session drew
    out = tmp_path / "out" / "lfm"
    assert lfm1b.main(["--input", str(src), "--output-dir", str(out), "--max-len", "100", "--no-progress"]) == 0
    inter = (out / "lfm.inter").read_text().splitlines()
    assert len(inter) == 1 + 30 * 100
    with pytest.raises(ValueError, match="events_per_user must be >= 1"):
        generate(tmp_path / "bad.txt", "lfm1b", users=3, events_per_user=0)
