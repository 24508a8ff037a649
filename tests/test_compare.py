"""The comparison runner and the efficiency benchmark, end to end on ml-100k with tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from recbole_mamba import compare
from recbole_mamba.bench import efficiency

pytestmark = pytest.mark.slow

TINY = ["--user_inter_num_interval=[20,60]", "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16",
        "--d_state=8", "--embedding_size=16", "--train_batch_size=2048", "--eval_batch_size=4096",
        "--valid_metric=NDCG@10", "--metrics=[Hit,NDCG,MRR]", "--topk=[10]", "--loss_type=CE",
        "--train_neg_sample_args=None"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_compare_writes_table_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    # MoEMaTrRec with 3 heads on width 16 fails in its constructor: reported, the others still run
    argv = ["--dataset", "ml-100k", "--models", "MambaRec,GRU4Rec,MoEMaTrRec", "--epochs", "1",
            "--seeds", "1,2", "--out", str(out), "--n_heads=3", *TINY]
    assert compare.main(argv) == 1  # tables written, exit 1: some runs failed
    first_out = capsys.readouterr()
    assert "[1/6] MambaRec seed 1: epoch 1/1 trained in" in first_out.out and "valid score" in first_out.out
    assert "2 of 6 run(s) failed" in first_out.err
    rows = read_csv(out / "results.csv")
    assert [(r["model"], r["seed"], r["status"]) for r in rows] == [
        ("MambaRec", "1", "ok"), ("MambaRec", "2", "ok"), ("GRU4Rec", "1", "ok"), ("GRU4Rec", "2", "ok"),
        ("MoEMaTrRec", "1", "failed"), ("MoEMaTrRec", "2", "failed")]
    assert all(0 <= float(r["test_ndcg@10"]) <= float(r["test_hit@10"]) for r in rows if r["status"] == "ok")
    assert all(float(r["run_s"]) > 0 and int(r["peak_rss_mib"]) > 100 for r in rows if r["status"] == "ok")
    assert "must be a multiple of n_heads" in rows[-1]["error"]
    md = (out / "results.md").read_text()
    assert "| MambaRec |" in md and "| GRU4Rec |" in md and "MoEMaTrRec: ValueError" in md
    assert md.count("**") >= 2 * 3  # the best value of each metric in bold
    assert " ± " in md  # two seeds: mean ± std
    assert (out / "results.png").stat().st_size > 1000
    assert (out / "runs" / "GRU4Rec" / "seed1" / "run.log").stat().st_size > 0
    assert not list(out.glob("runs/*/*/saved/*.pth"))
    first = json.loads((out / "runs" / "MambaRec" / "seed1" / "result.json").read_text())
    # a second call reruns only what did not finish
    assert compare.main(argv) == 1
    printed = capsys.readouterr().out
    assert printed.count("done before, kept") == 4 and printed.count("FAILED") == 2
    assert json.loads((out / "runs" / "MambaRec" / "seed1" / "result.json").read_text()) == first


def test_compare_rejects_unknown_model_before_running(tmp_path, capsys):
    assert compare.main(["--dataset", "ml-100k", "--models", "MambaRec,SASrec", "--out", str(tmp_path / "x")]) == 2
    assert "Did you mean SASRec" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_efficiency_bench_two_lengths(tmp_path):
    out = tmp_path / "bench"
    assert efficiency.main(["--models", "SASRec,MambaRec", "--lengths", "16,32", "--batch-size", "4",
                            "--steps", "1", "--out", str(out)]) == 0
    rows = read_csv(out / "efficiency.csv")
    assert [(r["model"], r["length"], r["status"]) for r in rows] == [
        ("SASRec", "16", "ok"), ("SASRec", "32", "ok"), ("MambaRec", "16", "ok"), ("MambaRec", "32", "ok")]
    assert all(float(r["train_step_s"]) > 0 and float(r["infer_s"]) > 0 for r in rows)
    assert all(float(r["train_vs_sasrec"]) == 1.0 for r in rows if r["model"] == "SASRec")
    assert (out / "efficiency.png").stat().st_size > 1000
    assert "train vs SASRec" in (out / "efficiency.md").read_text()


def test_profile_names_the_fused_kernels_and_accounts_for_the_step():
    """--profile: the fused CPU kernels appear under their own names (their forward, which torch
    does not record for a custom Function, included), and the shares cover the whole step."""
    import torch

    from recbole_mamba.bench.models import build_model_and_transform, random_sequences, training_batch

    net, transform = build_model_and_transform("MambaRec", 32, hidden_size=16, d_state=8, mamba_backend="cpu",
                                               train_mode="augment")
    net.train()
    data = training_batch(net, transform, random_sequences(net.n_items, 4, 33))
    optimizer = torch.optim.Adam(net.parameters())

    def step():
        optimizer.zero_grad()
        net.calculate_loss(data).backward()
        optimizer.step()

    step()
    rows = efficiency.profile_step(step, top=200)
    ops = {r["op"]: r for r in rows}
    for name in ("recbole_mamba::selective_scan_cpu_fwd", "recbole_mamba::selective_scan_cpu_bwd",
                 "recbole_mamba::causal_conv1d_silu_cpu_fwd", "recbole_mamba::causal_conv1d_silu_cpu_bwd"):
        assert ops[name]["calls"] == 1 and ops[name]["self_s"] > 0, name
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-6
    table = efficiency.profile_markdown("MambaRec", 32, efficiency.profile_step(step, top=3))
    assert table.count("\n| `") == 4 and "| `other` |" in table  # three ops, then the rest


def test_efficiency_bench_rejects_a_negative_profile(capsys):
    with pytest.raises(SystemExit):
        efficiency.main(["--profile", "-1"])
    assert "--profile must be 0" in capsys.readouterr().err


def test_rounds_combine_to_medians_with_per_round_ratios():
    def row(model, train, infer, peak, status="ok"):
        return {"model": model, "length": 200, "batch": 4, "status": status, "train_step_s": train,
                "infer_s": infer, "peak_mib": peak}

    rounds = [[row("SASRec", 1.0, 0.1, 10), row("MambaRec", 0.5, 0.05, 5), row("X", 2.0, 0.2, 20)],
              [row("SASRec", 2.0, 0.2, 10), row("MambaRec", 0.8, 0.1, 6), row("X", None, None, None, "OOM")],
              [row("SASRec", 4.0, 0.4, 10), row("MambaRec", 3.0, 0.3, 7), row("X", 2.0, 0.2, 20)]]
    for rows in rounds:
        efficiency.add_ratios(rows)
    sas, mamba, x = efficiency.combine_rounds(rounds)
    assert sas["train_step_s"] == 2.0 and sas["train_vs_sasrec"] == 1.0
    assert mamba["train_step_s"] == 0.8 and mamba["peak_mib"] == 6
    # per-round ratios 0.5, 0.4, 0.75 -> 0.5 (the ratio of the medians would be 0.4)
    assert mamba["train_vs_sasrec"] == 0.5 and mamba["rounds"] == 3
    assert x["status"] == "OOM" and x.get("train_step_s") is None


def test_efficiency_bench_rejects_zero_rounds(capsys):
    with pytest.raises(SystemExit):
        efficiency.main(["--rounds", "0"])
    assert "--rounds and --steps must be at least 1" in capsys.readouterr().err


def test_efficiency_bench_applies_recbole_batch_transform():
    """BERT4Rec trains on masked sequences that RecBole's transform makes (fields it names in the
    config before the model exists): without them its calculate_loss fails."""
    row = efficiency.measure("BERT4Rec", 16, 4, 1, "cpu", memory_limit_gib=None, timeout=300)
    assert row["status"] == "ok", row
    assert row["train_step_s"] > 0 and row["infer_s"] > 0


def test_efficiency_bench_records_out_of_memory():
    """The cap bounds what the measured steps map, not the imports: a small model fits in it,
    SASRec's L x L attention at L=2000 (4 x 2 heads x 2000^2 floats = 128 MiB a layer) does not."""
    small = efficiency.measure("MambaRec", 16, 2, 1, "cpu", memory_limit_gib=0.1, timeout=300)
    assert small["status"] == "ok", small
    row = efficiency.measure("SASRec", 2000, 4, 1, "cpu", memory_limit_gib=0.1, timeout=300)
    assert row["status"] == "OOM", row


def test_compare_on_a_relative_data_path_and_a_missing_dataset(tmp_path, monkeypatch, capsys):
    """Runs happen in their own folders: a dataset under ./dataset/ must still be found."""
    import recbole

    src = Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    lines = src.read_text().splitlines()
    (tmp_path / "dataset" / "mini").mkdir(parents=True)
    (tmp_path / "dataset" / "mini" / "mini.inter").write_text("\n".join(lines[:30001]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert compare.main(["--dataset", "mini", "--models", "MambaRec", "--epochs", "1", "--out", "out",
                         "--load_col={inter: [user_id, item_id, timestamp]}", *TINY]) == 0
    (row,) = read_csv(tmp_path / "out" / "results.csv")
    assert row["status"] == "ok", row["error"]
    capsys.readouterr()
    assert compare.main(["--dataset", "nowhere", "--models", "MambaRec", "--out", "out2"]) == 2
    assert "nowhere.inter does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
