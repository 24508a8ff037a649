"""The online benchmark runs end to end on ml-100k's item set and reports exact, faster events."""

from __future__ import annotations

import csv

import pytest

from recbole_mamba.bench import streaming


def test_streaming_benchmark_writes_rows_and_ratio(tmp_path, capsys):
    assert streaming.main(["--models", "MambaRec,MLSA4Rec", "--lengths", "24", "--batches", "1,3",
                           "--events", "3", "--ratio-rounds", "2", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "streaming.csv")))
    assert [(r["model"], r["history"], r["batch"]) for r in rows] == [
        ("MambaRec", "24", "1"), ("MambaRec", "24", "3"), ("MLSA4Rec", "24", "1"), ("MLSA4Rec", "24", "3")]
    for row in rows:
        assert float(row["event_ms"]) > 0 and float(row["recompute_ms"]) > 0
        assert float(row["max_abs_diff"]) < 1e-4  # the streamed scores are the recomputed ones
        assert int(row["state_bytes_per_user"]) > 0
    assert "| MLSA4Rec | 24 | 3 |" in (tmp_path / "streaming.md").read_text()
    out = capsys.readouterr().out
    assert "Per-event cost relative to MambaRec, history 24" in out
    assert "MLSA4Rec, num_layers=0" in (tmp_path / "streaming.md").read_text()
    ratio_line = next(line for line in out.splitlines() if line.startswith("  batch 3:"))
    assert "MambaRec" in ratio_line and "(1.00x)" in ratio_line and "MLSA4Rec, num_layers=0" in ratio_line


def test_streaming_benchmark_rejects_too_many_events():
    with pytest.raises(SystemExit):
        streaming.main(["--lengths", "10", "--events", "10"])
