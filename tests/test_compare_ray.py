"""The comparison grid on a Ray cluster: two simulated nodes (``ray.cluster_utils.Cluster``) run
the same runs as one machine does, with the same rows, and a run whose node is lost is rerun."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from recbole_mamba import compare

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

TINY = ["--user_inter_num_interval=[20,60]", "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16", "--d_state=8",
        "--embedding_size=16", "--train_batch_size=2048", "--eval_batch_size=4096", "--valid_metric=NDCG@10",
        "--metrics=[Hit,NDCG,MRR]", "--topk=[10]", "--loss_type=CE", "--train_neg_sample_args=None"]
GRID = ["--dataset", "ml-100k", "--models", "MambaRec,GRU4Rec", "--epochs", "1", "--seeds", "3", *TINY]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(table: list[dict]) -> list[tuple]:
    return [(r["model"], r["seed"], r["status"], *(r[k] for k in r if k.startswith(("test_", "valid_")))) for r in table]


@pytest.fixture()
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20})
    yield c
    ray.shutdown()
    c.shutdown()


def test_compare_on_a_two_node_cluster_equals_a_local_run(tmp_path, cluster, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local runs use the threads a Ray task gets
    assert compare.main([*GRID, "--out", str(tmp_path / "local")]) == 0
    cluster.add_node(**NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    assert compare.main([*GRID, "--out", str(tmp_path / "ray"), "--address", cluster.address]) == 0
    out = capsys.readouterr().out
    assert out.count("submitted to the Ray cluster") == 2 and out.count("finished on") == 2
    local, remote = rows(tmp_path / "local" / "results.csv"), rows(tmp_path / "ray" / "results.csv")
    assert metrics(remote) == metrics(local) and all(r["status"] == "ok" for r in remote)
    for name in ("results.md", "results.png", "runs/MambaRec/seed3/run.log", "runs/GRU4Rec/seed3/result.json"):
        assert (tmp_path / "ray" / name).stat().st_size > 0, name
    assert "epoch 0 training" in (tmp_path / "ray" / "runs/MambaRec/seed3/run.log").read_text()
    # finished runs are kept, not rerun, as on one machine
    assert compare.main([*GRID, "--out", str(tmp_path / "ray"), "--address", cluster.address]) == 0
    assert capsys.readouterr().out.count("done before, kept") == 2


def test_a_run_whose_node_dies_is_rerun_on_another(tmp_path, cluster, capsys):
    doomed = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", compare.main(
        [*GRID, "--models", "MambaRec", "--out", str(tmp_path / "ray"), "--address", cluster.address])))
    worker.start()
    spec = tmp_path / "ray" / "runs" / "MambaRec" / "seed3" / "spec.json"
    deadline = time.time() + 120
    while not spec.exists() and time.time() < deadline:  # written just before the task is submitted
        time.sleep(0.2)
    time.sleep(5)  # the run is under way on the only node with CPUs (a run takes ~20 s)
    cluster.add_node(**NODE)
    cluster.remove_node(doomed)
    # ~20 s for the rerun on an idle machine; Ray's workers run at low priority, so beside other
    # processes on 2 cores the new node's start and the rerun took over 300 s
    worker.join(timeout=900)
    out = capsys.readouterr().out
    assert not worker.is_alive(), "compare did not end within 900 s of the node's death:\n" + out
    assert result.get("code") == 0, out
    finished = [line for line in out.splitlines() if "finished on" in line]
    assert len(finished) == 1 and f"(node {doomed.unique_id[:12]})" not in finished[0], out
    table = rows(tmp_path / "ray" / "results.csv")
    assert [(r["model"], r["status"]) for r in table] == [("MambaRec", "ok")]
