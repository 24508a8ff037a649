"""run_hyper.py on a local Ray instance: a real search on ml-100k, retries, resume, bad spaces."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recbole_mamba.hyper import runner
from recbole_mamba.hyper.space import SpaceError, load_space, to_tune

ROOT = Path(__file__).resolve().parents[1]
# a tiny model on ~200 ml-100k users: a trial epoch takes a second or two
TINY = ["--user_inter_num_interval=[20,60]", "--MAX_ITEM_LIST_LENGTH=10", "--d_state=8",
        "--train_batch_size=2048", "--eval_batch_size=4096", "--seed=2024",
        "--valid_metric=NDCG@10"]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


# --------------------------------------------------------------------------- spaces (no Ray)
@pytest.mark.parametrize("space,message", [
    ({"learning_rate": {"logunifrm": [1e-4, 1e-2]}}, "unknown distribution 'logunifrm'"),
    ({"learning_rate": {"loguniform": [0, 1e-2]}}, "loguniform needs low > 0"),
    ({"learning_rate": {"uniform": [0.5, 0.1]}}, "needs low < high"),
    ({"num_layers": {"randint": [1.5, 3]}}, "randint needs integer bounds"),
    ({"hidden_size": {"choice": []}}, "non-empty list"),
    ({"loss_type": {"grid": []}}, "grid needs a non-empty list"),
    ({"hidden_size": 64}, "exactly one distribution"),
    ({"dropout_prob": {"uniform": [0.1]}}, r"needs \[low, high\]"),
    ({"learning_rte": {"loguniform": [1e-4, 1e-2]}}, "Did you mean learning_rate"),
])
def test_bad_space_files_are_rejected(tmp_path, space, message):
    path = write_space(tmp_path / "space.yaml", space)
    with pytest.raises(SpaceError, match=message):
        load_space(path, model="MambaRec")


def test_shipped_spaces_validate():
    folder = ROOT / "properties" / "hyper"
    files = sorted(folder.glob("*.yaml"))
    assert {p.stem for p in files} >= {"MambaRec", "MLSA4Rec", "MoEMaTrRec", "SASRec", "GRU4Rec",
                                       "BERT4Rec", "LightSANs"}
    for path in files:
        space = load_space(path, model=path.stem)
        assert set(to_tune(space)) == set(space)
    for path in sorted((folder / "defaults").glob("*.yaml")):  # the searches behind the shipped defaults
        space = load_space(path, model=path.stem)
        assert set(to_tune(space)) == set(space)


def test_grid_keys_run_every_value(tmp_path):
    space = load_space(write_space(tmp_path / "s.yaml", {"loss_type": {"grid": ["CE", "SS"]},
                                                         "hidden_size": {"choice": [8]}}), model="MambaRec")
    tuned = to_tune(space)
    assert tuned["loss_type"] == {"grid_search": ["CE", "SS"]}


def test_grid_with_a_model_based_search_is_refused(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", {"loss_type": {"grid": ["CE", "SS"]}})
    code = runner.main(["--model=MambaRec", "--space", str(space), "--search", "optuna",
                        "--storage", str(tmp_path / "st"), *TINY])
    assert code != 0 and "cannot run grid keys (loss_type)" in capsys.readouterr().err


def test_bad_space_stops_the_cli_before_any_trial(tmp_path, capsys):
    space = write_space(tmp_path / "bad.yaml", {"hidden_sise": {"choice": [8]}})
    code = runner.main(["--model=MambaRec", "--space", str(space), "--storage", str(tmp_path / "s")])
    assert code == 2
    assert "'hidden_sise' is not a config key of MambaRec" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- real searches
@pytest.fixture(scope="module")
def ray_local():
    import ray

    runner.init_ray(None)
    yield
    ray.shutdown()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_asha_search_reports_every_epoch_and_writes_best_config(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", {"hidden_size": {"choice": [8, 16]},
                                                  "learning_rate": {"loguniform": [1e-3, 1e-2]}})
    code = runner.main(["--model=MambaRec", "--dataset=ml-100k", "--space", str(space),
                        "--num-samples", "3", "--max-epochs", "2", "--scheduler", "asha",
                        "--grace-period", "1", "--storage", str(tmp_path / "s"), "--name", "t", *TINY])
    assert code == 0
    folder = tmp_path / "s" / "t"
    rows = read_rows(folder / "trials.csv")
    assert len(rows) == 3 and all(r["status"] != "error" for r in rows)
    assert all(int(r["epochs"]) in (1, 2) for r in rows) and any(r["epochs"] == "2" for r in rows)
    scores = [float(r["ndcg@10"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # one report per epoch, each with the validation metrics
    progress = list(folder.glob("*/progress.csv"))
    assert len(progress) == 3
    for p in progress:
        epochs = [int(r["epoch"]) for r in read_rows(p)]
        assert epochs == list(range(1, len(epochs) + 1))
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["hidden_size"] == int(rows[0]["hidden_size"]) and best["MAX_ITEM_LIST_LENGTH"] == 10
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"] == 3
    assert set(summary["retrained"]["test_result"]) >= {"ndcg@10", "hit@10"}
    assert "| trial | status |" in (folder / "trials.md").read_text()
    assert not (folder / "models").exists() or not list((folder / "models").rglob("*.pth"))  # no RecBole checkpoint per trial unless asked


@pytest.mark.slow
def test_failing_trial_is_retried_and_reported(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # hidden_size 16 is not a multiple of 3 heads: the model raises in every attempt
    space = write_space(tmp_path / "space.yaml", {"n_heads": {"choice": [3]}})
    code = runner.main(["--model=MoEMaTrRec", "--space", str(space), "--num-samples", "1",
                        "--max-epochs", "1", "--max-failures", "1", "--storage", str(tmp_path / "s"),
                        "--name", "f", "--hidden_size=16", *TINY])
    assert code == 1
    (row,) = read_rows(tmp_path / "s" / "f" / "trials.csv")
    assert row["status"] == "error" and row["attempts"] == "2"  # the first try and one retry
    assert "must be a multiple of n_heads" in row["error"]
    assert "every trial failed" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_interruption_completes_the_search(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"hidden_size": {"choice": [8, 16]}})
    cmd = [sys.executable, str(ROOT / "run_hyper.py"), "--model=MambaRec", "--space", str(space),
           "--num-samples", "3", "--max-epochs", "2", "--scheduler", "fifo", "--max-concurrent", "1",
           "--storage", str(tmp_path / "s"), "--name", "r", "--no-retrain", *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    folder = tmp_path / "s" / "r"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # interrupt once a trial has reported
        if any(p.stat().st_size > 0 for p in folder.glob("*/progress.csv")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command with --resume" in err
    assert not (folder / "trials.csv").exists()
    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(folder / "trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
