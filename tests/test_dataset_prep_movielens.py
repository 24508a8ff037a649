"""dataset_prep.movielens on the real ML-1M files in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir, tiny_config
from dataset_prep.common import BadInputError
from dataset_prep.movielens import convert, main

ROOT = Path(__file__).resolve().parents[1]
ML1M = (shared_data_dir() or Path("/nonexistent")) / "ml-1m"
RATINGS = ML1M / "ratings.users_1-2999.dat"
SEQUENCES = ML1M / "sequences_chrono.orig_ids.txt"
needs_data = pytest.mark.skipif(not SEQUENCES.is_file(), reason="../shared/data/ml-1m not present")


def _pairs(inter: Path, max_user: int | None = None) -> set[tuple[int, int]]:
    out = set()
    with open(inter) as f:
        next(f)
        for line in f:
            u, i = line.split("\t", 2)[:2]
            if max_user is None or int(u) <= max_user:
                out.add((int(u), int(i)))
    return out


@needs_data
def test_both_formats_agree_on_real_ml1m(tmp_path):
    seq = convert(SEQUENCES, tmp_path / "seq" / "ml-1m", progress=False)
    rat = convert(RATINGS, tmp_path / "rat" / "ml-1m", progress=False)
    assert (seq.fmt, seq.interactions, seq.users, seq.items) == ("sequence", 1_000_209, 6_040, 3_706)
    assert (rat.fmt, rat.interactions, rat.users) == ("ratings", 487_650, 2_999)
    seq_inter, rat_inter = tmp_path / "seq/ml-1m/ml-1m.inter", tmp_path / "rat/ml-1m/ml-1m.inter"
    assert rat_inter.read_text().splitlines()[1] == "1\t1193\t5\t978300760"
    assert seq_inter.read_text().splitlines()[0] == "user_id:token\titem_id:token\ttimestamp:float"
    # the data README: for users 1..2999 both files hold the same (user, movie) pairs
    assert _pairs(seq_inter, 2999) == _pairs(rat_inter)
    # and the sequence order is the time order: positions follow ratings.dat's timestamps
    ts = {}
    for line in rat_inter.read_text().splitlines()[1:]:
        u, i, _, t = line.split("\t")
        ts[(u, i)] = int(t)
    last = {}
    for line in seq_inter.read_text().splitlines()[1:200_000]:
        u, i, _ = line.split("\t")
        if int(u) <= 2999:
            assert ts[(u, i)] >= last.get(u, 0)
            last[u] = ts[(u, i)]
    # side files from movies.dat / users.dat
    item = (tmp_path / "seq/ml-1m/ml-1m.item").read_text().splitlines()
    assert item[0] == "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"
    assert item[1] == "1\tToy Story\t1995\tAnimation Children's Comedy"
    assert len(item) == 3_884
    user = (tmp_path / "seq/ml-1m/ml-1m.user").read_text().splitlines()
    assert user[1] == "1\tF\t1\t10\t48067" and len(user) == 6_041


@needs_data
def test_folder_input_prefers_whole_sequence_file(tmp_path):
    summary = convert(ML1M, tmp_path / "ml-1m", progress=False)
    assert summary.source == SEQUENCES and summary.interactions == 1_000_209


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("text,line_no,reason", [
    ("1::10::5::100\n1::11::5\n", 2, "expected 4 fields"),
    ("1::10::5::100\n1::x::5::101\n", 2, "must be integers"),
    ("1::10::5::100\n1::11::five::101\n", 2, "Rating must be a number"),
    ("1::10::5::100\n\n1::11::5::101\n", 2, "empty line"),
    ("1::10::5::100\n1::11::5::10", 2, "truncated last line"),
    ("1::10::5::100\nUserID::MovieID::Rating::Timestamp\n", 2, "must be integers"),
])
def test_bad_ratings_line_named_and_nothing_written(tmp_path, text, line_no, reason):
    src = _write(tmp_path / "ratings.dat", text)
    out = tmp_path / "out" / "ml-x"
    with pytest.raises(BadInputError, match=reason) as err:
        convert(src, out, progress=False)
    assert err.value.line_no == line_no and str(src) in str(err.value)
    assert not out.exists() or not any(out.iterdir())  # no partial .inter, no temporaries


def test_skip_bad_lines_counts_them(tmp_path):
    src = _write(tmp_path / "ratings.dat", "1::10::5::100\r\n1::11\n2::12::4::7\n\n3::13::3::8")
    summary = convert(src, tmp_path / "out" / "ml-x", on_bad_lines="skip", progress=False)
    assert summary.interactions == 2  # the CRLF line is fine
    assert "3 (" in summary.skipped and "truncated" in summary.skipped
    lines = (tmp_path / "out/ml-x/ml-x.inter").read_text().splitlines()
    assert lines[1:] == ["1\t10\t5\t100", "2\t12\t4\t7"]


def test_sequence_format_timestamps_and_duplicate_user(tmp_path):
    src = _write(tmp_path / "seqs.txt", "7 3 1 2\n8 5\n")
    convert(src, tmp_path / "a" / "s", progress=False)
    assert (tmp_path / "a/s/s.inter").read_text().splitlines()[1:] == [
        "7\t3\t0", "7\t1\t1", "7\t2\t2", "8\t5\t0"]
    dup = _write(tmp_path / "dup.txt", "7 3 1\n8 5\n7 9\n")
    with pytest.raises(BadInputError, match=r"user 7 already had a line \(line 1\)"):
        convert(dup, tmp_path / "b" / "s", progress=False)


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    src = _write(tmp_path / "ratings.dat", "1::10::5::100\n")
    out = tmp_path / "out" / "ml-x"
    assert main(["--input", str(src), "--output-dir", str(out), "--no-progress"]) == 0
    (out / "ml-x.inter").write_text("mine")
    assert main(["--input", str(src), "--output-dir", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "ml-x.inter").read_text() == "mine"
    assert main(["--input", str(src), "--output-dir", str(out), "--no-progress", "--force"]) == 0
    assert (out / "ml-x.inter").read_text().startswith("user_id:token")


@needs_data
@pytest.mark.slow
def test_run_recbole_on_converted_ml1m_subset(in_tmp):
    """run_recbole.py --dataset=ml-1m with our properties/dataset/ml-1m.yaml, on 300 real users."""
    lines = SEQUENCES.read_text().splitlines()[:300]
    src = _write(in_tmp / "ml1m-300.txt", "\n".join(lines) + "\n")
    convert(src, in_tmp / "dataset" / "ml-1m", progress=False)
    cfg = in_tmp / "tiny.yaml"
    cfg.write_text("\n".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}"
                             for k, v in tiny_config(in_tmp).items()
                             if k not in ("user_inter_num_interval", "metrics", "topk")) + "\n")
    run = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), "--model=MLSA4Rec", "--dataset=ml-1m",
                          f"--config_files={cfg}", "--data_path=dataset", "--train_mode=all_positions"],
                         cwd=in_tmp, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "test result" in log and "ndcg@10" in log
