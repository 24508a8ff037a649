"""The large-catalogue benchmark end to end at a small size: a synthetic listening log in
sessions, the LFM-1b converter, RecBole's dataset, training steps and the chunked ranking."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("model", ["MLSA4Rec"])  # MambaRec: the same path, and the README run
def test_catalogue_bench_runs_the_converter_and_reports(tmp_path, model):
    out = subprocess.run(
        [sys.executable, "-m", "recbole_mamba.bench.catalogue", "--model", model, "--items", "3000",
         "--sparse", "True", "--users", "40", "--events", "250", "--length", "50", "--steps", "1",
         "--eval-users", "60", "--batch", "2", "--threads", "1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "generated in" in out.stderr and "converted in" in out.stderr
    row = [line for line in out.stdout.splitlines() if line.startswith("| 3,000 |")]
    assert len(row) == 1, out.stdout
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    distinct = int(cells[1].replace(",", ""))
    assert 100 < distinct <= 3000 and cells[4] == "sparse" and cells[5] == "CombinedOptimizer"
    assert float(cells[6]) > 0 and float(cells[9]) > 0
    # the converter's atomic files are what RecBole read
    assert (tmp_path / "sessions3000" / "sessions3000.inter").exists()
