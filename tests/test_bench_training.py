"""The training benchmark: variants run in their own processes, a model per variant, the NDCG
trace, and the time each variant needs to reach the first variant's best."""

from __future__ import annotations

from recbole_mamba.bench import training

SMALL = ["--set", "user_inter_num_interval=[20,60]", "--set", "MAX_ITEM_LIST_LENGTH=10",
         "--set", "hidden_size=16", "--set", "d_state=8", "--set", "train_batch_size=512",
         "--set", "eval_batch_size=4096", "--set", "loss_type=CE", "--set", "train_neg_sample_args=None"]


def test_time_to_target_table_reads_the_first_variants_best():
    results = [
        ("base", {"metric": "ndcg@10", "curve": [(1.0, 0.01), (2.0, 0.03), (3.0, 0.02)]}),
        ("fast", {"metric": "ndcg@10", "curve": [(0.1, 0.02), (0.2, 0.031)]}),
        ("slow", {"metric": "ndcg@10", "curve": [(1.0, 0.01), (4.0, 0.025)]}),
        ("failed", None),
    ]
    table = training.time_to_target_table(results).splitlines()
    assert "base's best ndcg@10 (0.0300)" in table[0]
    assert table[2] == "| base | 2.0 | 1.00x |"
    assert table[3] == "| fast | 0.2 | 0.10x |"
    assert table[4] == "| slow | not reached in 4.0 (best 0.0250) | - |"
    assert len(table) == 5


def test_training_bench_runs_two_models_and_traces_ndcg(capsys):
    code = training.main(["--model", "MambaRec", "--dataset", "ml-100k", "--minutes", "0.05",
                          "--eval-every", "1",
                          "--variant", "SASRec augmented: model=SASRec train_mode=augment",
                          "--variant", "MambaRec all positions: train_mode=all_positions", *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SASRec augmented ndcg@10 by training minute:" in out
    assert "MambaRec all positions ndcg@10 by training minute:" in out
    assert "minutes to SASRec augmented's best ndcg@10" in out
    # SASRec trains on every prefix, MambaRec on one window per user: far fewer rows
    rows = {line.split("|")[1].strip(): int(line.split("|")[2].replace(",", ""))
            for line in out.splitlines() if line.startswith("| ") and "rows/epoch" not in line
            and line.split("|")[2].strip().replace(",", "").isdigit()}
    assert rows["MambaRec all positions"] * 5 < rows["SASRec augmented"]
