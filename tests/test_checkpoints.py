"""Atomic checkpoints and exact resume: a kill -9 in the middle of a checkpoint write leaves the
previous best intact, and ``run_recbole.py --resume`` ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_mamba.checkpoints import atomic_torch_save, remove_stale_temporaries
from recbole_mamba.safe_load import load_recbole_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# kills its own process at the N-th os.fsync: inside a checkpoint write, after the temporary file
# is complete and before it is renamed over the target
KILLER = """
import os, runpy, signal, sys
N = int(os.environ["KILL_AT_FSYNC"])
calls = [0]
real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] == N:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd)
os.fsync = fsync
sys.argv = ["run_recbole.py"] + sys.argv[1:]
runpy.run_path(os.path.join(os.environ["REPO"], "run_recbole.py"), run_name="__main__")
"""

FLAGS = [
    "--model=MambaRec", "--dataset=ml-100k", "--epochs=3", "--eval_step=1", "--MAX_ITEM_LIST_LENGTH=10",
    "--hidden_size=16", "--d_state=8", "--inner_size=32", "--train_batch_size=256",
    "--user_inter_num_interval=[20,60]", "--checkpoint_dir=saved", "--seed=2024", "--show_progress=False",
    "--log_wandb=False",
]


def _run(cwd: Path, *args: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPO": str(ROOT), "OMP_NUM_THREADS": "1"}
    if kill_at is None:
        cmd = [sys.executable, str(ROOT / "run_recbole.py"), *args]
    else:
        (cwd / "killer.py").write_text(KILLER)
        env["KILL_AT_FSYNC"] = str(kill_at)
        cmd = [sys.executable, str(cwd / "killer.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.pth"
    atomic_torch_save({"w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"w": lambda: None}, path)  # not picklable: fails halfway through
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.pth.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"partial")
    live = tmp_path / f".other.pth.tmp-{os.getppid()}"  # a running process's file is kept
    live.write_bytes(b"in progress")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


SPARSE = ["--loss_type=SS", "--n_negatives=64", "--sparse_item_embedding=True"]  # SparseAdam + Adam


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], SPARSE], ids=["dense", "sparse-embedding"])
def test_kill_during_checkpoint_write_then_resume_gives_the_uninterrupted_result(tmp_path, extra):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    flags = [*FLAGS, *extra]
    ref = _run(whole, *flags, "--results=r.json")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert not list((whole / "saved").glob("*.resume"))  # a finished run leaves no resume state

    # epoch 0 writes the best model and the resume state (2 fsyncs each: file, folder); the 5th
    # fsync is the first write of epoch 1
    dead = _run(killed, *flags, "--results=r.json", kill_at=5)
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-3000:]
    saved = killed / "saved"
    (best,) = saved.glob("MambaRec-*.pth")
    assert load_recbole_checkpoint(best)["epoch"] == 0  # the previous best, intact
    (state,) = saved.glob("*.pth.resume")
    temporaries = list(saved.glob(".*.tmp-*"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0  # killed mid-write

    resumed = _run(killed, *flags, "--results=r.json", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training continues at epoch 1" in resumed.stderr
    assert not list(saved.glob(".*.tmp-*")) and not list(saved.glob("*.resume"))
    a = json.loads((whole / "r.json").read_text())
    b = json.loads((killed / "r.json").read_text())
    assert b["test_result"] == a["test_result"]
    assert b["best_valid_result"] == a["best_valid_result"]
    assert Path(b["checkpoint"]).name == best.name


def test_resume_without_a_killed_run_says_so(tmp_path):
    proc = _run(tmp_path, *FLAGS, "--resume")
    assert proc.returncode != 0
    assert "no MambaRec-*.pth.resume" in proc.stderr and "Traceback" not in proc.stderr
