"""dataset_prep.sequences on the real Amazon S3-Rec files in ../shared/data (never copied here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir
from dataset_prep.common import BadInputError
from dataset_prep.sequences import convert

ROOT = Path(__file__).resolve().parents[1]
AMAZON = (shared_data_dir() or Path("/nonexistent")) / "amazon-s3"
needs_data = pytest.mark.skipif(not (AMAZON / "Toys_and_Games.txt").is_file(),
                                reason="../shared/data/amazon-s3 not present")


@needs_data
@pytest.mark.parametrize("name, users, items, inters", [
    ("Toys_and_Games.txt", 19_412, 11_924, 167_597),
    ("Sports_and_Outdoors.txt", 35_598, 18_357, 296_337),
])
def test_real_amazon_files_convert_with_published_counts(tmp_path, name, users, items, inters):
    summary = convert(AMAZON / name, tmp_path / "out", progress=False)
    assert (summary.users, summary.items, summary.interactions) == (users, items, inters)
    lines = (tmp_path / "out" / "out.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    first = (AMAZON / name).read_text().splitlines()[0].split()
    assert lines[1 : len(first)] == [f"{first[0]}\t{item}\t{pos}" for pos, item in enumerate(first[1:])]


def test_crlf_bom_and_string_tokens(tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes("\ufeffu1 a b c\r\nu2 b\r\n".encode("utf-8"))
    convert(src, tmp_path / "d", progress=False)
    assert (tmp_path / "d" / "d.inter").read_text().splitlines()[1:] == [
        "u1\ta\t0", "u1\tb\t1", "u1\tc\t2", "u2\tb\t0"]


@pytest.mark.parametrize("content, line, reason", [
    ("1 2 3\n1 4\n", 2, r"user 1 already had a line \(line 1\)"),
    ("1 2 3\n7\n", 2, "a user line needs a user and at least one item"),
    ("1 2 3\n\n2 3\n", 2, "empty line"),
    ("1 2 3\n2 3", 2, "truncated last line"),
])
def test_bad_lines_name_file_and_line_and_write_nothing(tmp_path, content, line, reason):
    src = tmp_path / "s.txt"
    src.write_text(content)
    with pytest.raises(BadInputError, match=rf"s.txt:{line}: {reason}"):
        convert(src, tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    summary = convert(src, tmp_path / "d", on_bad_lines="skip", progress=False)
    assert "bad lines skipped: 1" in summary.skipped


def test_cli_refuses_to_overwrite_and_reports_missing_input(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("1 2 3\n")
    cmd = [sys.executable, "-m", "dataset_prep.sequences", "--input", str(src), "--output-dir",
           str(tmp_path / "d"), "--no-progress"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "Pass --force" in again.stderr
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "nope.txt")] + cmd[5:], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
