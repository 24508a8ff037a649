"""RecBole's distributed training on CPU (gloo): ``run_recbole.py --nproc=2`` for our model in
all-position mode and for RecBole's SASRec; the checkpoint loads in one process; a killed
one-process run resumes under DDP; a busy port and a node that never joins are one line each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_mamba.safe_load import load_recbole_checkpoint

from conftest import unused_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["--dataset=ml-100k", "--epochs=1", "--nproc=2", "--show_progress=False", "--hidden_size=16",
         "--MAX_ITEM_LIST_LENGTH=20", "--checkpoint_dir=saved", "--results=r.json", "--log_wandb=False"]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _evaluate_in_one_process(cwd: Path, ckpt: Path) -> dict:
    code = ("import json, sys; import recbole_mamba; from recbole.quick_start import load_data_and_model; "
            "from recbole.utils import get_trainer; c, m, d, tr, va, te = load_data_and_model(sys.argv[1]); "
            "t = get_trainer(c['MODEL_TYPE'], c['model'])(c, m); "
            "print(json.dumps({k: float(v) for k, v in t.evaluate(te, load_best_model=False).items()}))")
    one = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    return json.loads(one.stdout.strip().splitlines()[-1])


# MambaRec: 449 users (odd: DistributedSampler would repeat one), metrics to 8 decimals
@pytest.mark.parametrize("model,extra", [("MambaRec", ["--d_state=8", "--train_mode=all_positions",
                                                       "--user_inter_num_interval=[20,60]", "--metric_decimal_place=8"]),
                                         ("SASRec", ["--n_layers=1", "--inner_size=32"])])
def test_two_process_gloo_training_saves_one_loadable_checkpoint(tmp_path, model, extra):
    proc = _run(tmp_path, f"--model={model}", *SMALL, *extra, f"--port={unused_port()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "saved").glob(f"{model}-*.pth")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["checkpoint"] == str(ckpt.resolve()) or Path(result["checkpoint"]).name == ckpt.name
    assert 0 < result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"]
    state = load_recbole_checkpoint(ckpt)
    assert not any(k.startswith("module.") for k in state["state_dict"])  # plain model, not the DDP wrapper
    assert state["config"]["world_size"] == 2
    # the test metrics of the DDP run are exact: one process evaluating its checkpoint gets the same
    if model == "MambaRec":
        assert _evaluate_in_one_process(tmp_path, ckpt) == pytest.approx(result["test_result"], abs=1e-6)
    # rank 0 alone wrote a log
    logs = list((tmp_path / "log" / model).glob("*.log"))
    assert sum("epoch 0 training" in p.read_text() for p in logs) == 1


def test_sampled_uni100_metrics_under_ddp_equal_one_process(tmp_path):
    """uni100 under --nproc=2: every rank ranks every user against the same negatives (each pass
    seeded with config['seed']), so the DDP run's test metrics equal one process evaluating its
    checkpoint, for 449 users (odd)."""
    uni100 = "--eval_args={'split': {'LS': 'valid_and_test'}, 'order': 'TO', 'group_by': 'user', 'mode': 'uni100'}"
    proc = _run(tmp_path, "--model=MambaRec", *SMALL, "--d_state=8", "--train_mode=all_positions", uni100,
                "--user_inter_num_interval=[20,60]", "--metric_decimal_place=8", f"--port={unused_port()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "saved").glob("MambaRec-*.pth")
    assert load_recbole_checkpoint(ckpt)["config"]["eval_args"]["mode"] == {"valid": "uni100", "test": "uni100"}
    result = json.loads((tmp_path / "r.json").read_text())
    assert _evaluate_in_one_process(tmp_path, ckpt) == pytest.approx(result["test_result"], abs=1e-6)
    assert 0 < result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"] < 1


def test_two_simulated_nodes_form_world_size_four_with_exact_metrics(tmp_path):
    """Two ``run_recbole.py --nproc=2`` on 127.0.0.1 with RecBole's --world_size 4 and
    --group_offset 0 / 2 (two nodes of two processes): one group, one checkpoint, and test metrics
    (full ranking, 449 users: not a multiple of 4) equal to one process evaluating that checkpoint."""
    port = unused_port()
    common = ["--model=MambaRec", *SMALL, "--d_state=8", "--train_mode=all_positions", "--world_size=4",
              "--user_inter_num_interval=[20,60]", "--metric_decimal_place=8", "--ip=127.0.0.1",
              f"--port={port}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, str(ROOT / "run_recbole.py"), *common, f"--group_offset={offset}",
                               *(["--results=r1.json"] if offset else [])],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for offset in (0, 2)]
    outs = [p.communicate(timeout=900) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    (ckpt,) = (tmp_path / "saved").glob("MambaRec-*.pth")
    state = load_recbole_checkpoint(ckpt)
    assert state["config"]["world_size"] == 4
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["test_result"] == pytest.approx(_evaluate_in_one_process(tmp_path, ckpt), abs=1e-6)
    assert 0 < result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"]


def test_busy_port_is_one_line(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = _run(tmp_path, "--model=SASRec", *SMALL, f"--port={port}", "--ip=127.0.0.1")
    finally:
        holder.close()
    assert proc.returncode != 0
    assert f"--port {port}: the port on 127.0.0.1 is in use" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("run_recbole.py: a process of --nproc=2 failed")


def test_a_node_that_never_joins_is_a_timeout_in_one_line(tmp_path):
    """One node of a world of 4 started alone: the group does not form within --dist_timeout."""
    port = unused_port()
    proc = _run(tmp_path, "--model=SASRec", *SMALL, f"--port={port}", "--ip=127.0.0.1", "--world_size=4",
                "--group_offset=0", "--dist_timeout=10")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("run_recbole.py: a process of --nproc=2 failed")
    assert f"127.0.0.1:{port} did not form within 10 s" in last and "world_size 4" in last
    assert not list(tmp_path.glob("saved/*.pth"))

def test_a_killed_single_process_run_resumes_under_ddp(tmp_path):
    """A one-process run killed after its first evaluated epoch continues under ``--nproc=2``
    from its resume state: at the next epoch, into the same checkpoint, which then holds the
    later epoch's model and loads in one process."""
    from test_checkpoints import FLAGS, _run as run_or_kill

    flags = [f for f in FLAGS if not f.startswith("--epochs")] + ["--epochs=2", "--results=r.json"]
    # fsync 5 is inside epoch 1's first checkpoint write (epoch 0: model and resume state, 2 each)
    dead = run_or_kill(tmp_path, *flags, kill_at=5)
    assert dead.returncode != 0
    saved = tmp_path / "saved"
    (best,) = saved.glob("MambaRec-*.pth")
    assert load_recbole_checkpoint(best)["epoch"] == 0
    resumed = _run(tmp_path, *flags, "--resume", "--nproc=2", f"--port={unused_port()}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training continues at epoch 1" in resumed.stderr
    assert "epoch 0 training" not in resumed.stderr and "epoch 1 training" in resumed.stderr
    assert [p.name for p in saved.iterdir()] == [best.name]  # no resume state, no temporaries left
    state = load_recbole_checkpoint(best)
    assert state["config"]["world_size"] == 2 and not any(k.startswith("module.") for k in state["state_dict"])
    result = json.loads((tmp_path / "r.json").read_text())
    assert Path(result["checkpoint"]).name == best.name
    assert _evaluate_in_one_process(tmp_path, best) == pytest.approx(result["test_result"], abs=1e-4)
