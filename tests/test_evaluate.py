"""``python -m recbole_mamba.evaluate``: a checkpoint's validation and test metrics through RecBole's
evaluator equal what the run that wrote it reported; evaluation keys can change, others cannot."""

from __future__ import annotations

import glob
import json

import pytest
from recbole.quick_start import run_recbole

from recbole_mamba import evaluate

from conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("evaluate")
    os.chdir(root)
    cfg = tiny_config(root, metric_decimal_place=8, epochs=2)
    result = run_recbole(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    (ckpt,) = glob.glob(str(root / "saved" / "MambaRec-*.pth"))
    return root, ckpt, result


def test_metrics_equal_the_training_runs(trained):
    _, ckpt, result = trained
    got = evaluate.evaluate_checkpoint(ckpt)
    assert got["valid"] == pytest.approx(dict(result["best_valid_result"]), abs=1e-7)
    assert got["test"] == pytest.approx(dict(result["test_result"]), abs=1e-7)


def test_evaluation_keys_change_the_protocol(trained, tmp_path):
    _, ckpt, result = trained
    out = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", ckpt, "--splits", "test", "--eval_filter_seen=True", "--topk=[5,10]",
                          "--results", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["checkpoint"] == ckpt and set(written) == {"checkpoint", "test"}
    test = written["test"]
    assert {"hit@5", "ndcg@5", "hit@10", "ndcg@10"} <= set(test)
    # ml-100k holds no repeated (user, item) pair, so leaving seen items out only removes wrong answers
    assert test["hit@10"] >= result["test_result"]["hit@10"] and test["ndcg@10"] >= result["test_result"]["ndcg@10"]


@pytest.mark.parametrize("args,message", [
    (["--hidden_size=8"], "--hidden_size: evaluate changes only evaluation keys"),
    (["--topk=-3"], "topk must be"),
    (["--splits", "train"], "--splits: train: choose from valid, test"),
    (["--device", "tpu9"], "not a torch device"),
    (["--splits", "test", "topk=5"], "RecBole config flags look like --key=value"),
])
def test_bad_arguments_are_one_line(trained, capsys, args, message):
    _, ckpt, _ = trained
    assert evaluate.main(["--checkpoint", ckpt, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evaluate: error: ") and message in err[-1]


def test_missing_or_unreadable_checkpoint(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "none-*.pth")]) == 2
    assert "no file matches" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    assert evaluate.main(["--checkpoint", str(junk)]) == 2
    assert "evaluate: error:" in capsys.readouterr().err
