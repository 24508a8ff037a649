"""Registration through RecBole's own entry points, YAML defaults and overrides, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from recbole.config import Config

from recbole_mamba import MambaRec, MLSA4Rec, MoEMaTrRec
from recbole_mamba.registry import registered_models

from conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def test_get_model_everywhere_recbole_looks():
    import recbole.config.configurator as configurator
    import recbole.quick_start.quick_start as qs
    import recbole.utils as ru

    for get_model in (ru.get_model, configurator.get_model, qs.get_model):
        assert get_model("MambaRec") is MambaRec
        assert get_model("MoEMaTrRec") is MoEMaTrRec
        assert get_model("MLSA4Rec") is MLSA4Rec
    assert ru.get_model("SASRec").__name__ == "SASRec"  # built-ins unchanged
    assert registered_models() == ["MLSA4Rec", "MambaRec", "MoEMaTrRec"]


def test_unknown_model_lists_available_models():
    import recbole.utils as ru

    with pytest.raises(ValueError) as err:
        ru.get_model("MambaRek")
    msg = str(err.value)
    assert "Unknown model 'MambaRek'" in msg and "Did you mean MambaRec" in msg
    assert "MLSA4Rec" in msg and "SASRec" in msg
    assert "lightgbm" not in msg.split("RecBole's own lookup")[0]
    # a wrong case that still finds RecBole's module file (sasrec.py) used to escape as AttributeError
    with pytest.raises(ValueError, match="Did you mean SASRec"):
        ru.get_model("SASrec")


def test_yaml_defaults_loaded_and_overridable(in_tmp):
    cfg = Config(model="MLSA4Rec", dataset="ml-100k")
    assert cfg["k_interests"] == 20 and cfg["n_heads"] == 8 and cfg["d_state"] == 32
    assert cfg["loss_type"] == "CE" and cfg["train_neg_sample_args"]["distribution"] == "none"
    assert cfg["train_mode"] == "all_positions" and cfg["n_negatives"] == 256
    assert cfg["MAX_ITEM_LIST_LENGTH"] == 50
    cfg = Config(model="MLSA4Rec", dataset="ml-100k", config_dict={"k_interests": 7})
    assert cfg["k_interests"] == 7
    yaml_file = in_tmp / "user.yaml"
    yaml_file.write_text("d_state: 12\n")
    cfg = Config(model="MambaRec", dataset="ml-100k", config_file_list=[str(yaml_file)])
    assert cfg["d_state"] == 12 and cfg["mamba_variant"] == "attention"
    # RecBole's quick-start sequential settings still apply after our model file
    assert cfg["eval_args"]["order"] == "TO"


def test_recbole_key_names_are_accepted(in_tmp, monkeypatch):
    """n_layers / hidden_dropout_prob (SASRec's names) set our num_layers / dropout_prob, from a
    config dict, a file or the command line; both names with two values is an error."""
    cfg = Config(model="MambaRec", dataset="ml-100k", config_dict={"n_layers": 3, "hidden_dropout_prob": 0.35})
    assert cfg["num_layers"] == 3 and cfg["dropout_prob"] == 0.35
    yaml_file = in_tmp / "user.yaml"
    yaml_file.write_text("n_layers: 2\n")
    assert Config(model="MLSA4Rec", dataset="ml-100k", config_file_list=[str(yaml_file)])["num_layers"] == 2
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", "--hidden_dropout_prob=0.45"])
    assert Config(model="MoEMaTrRec", dataset="ml-100k")["dropout_prob"] == 0.45
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"])
    assert Config(model="MambaRec", dataset="ml-100k", config_dict={"n_layers": 2, "num_layers": 2})["num_layers"] == 2
    with pytest.raises(ValueError, match="n_layers=2 .*num_layers=4 were both given"):
        Config(model="MambaRec", dataset="ml-100k", config_dict={"n_layers": 2, "num_layers": 4})
    # RecBole's own models are untouched
    assert "num_layers" not in Config(model="SASRec", dataset="ml-100k", config_dict={"n_layers": 1}).final_config_dict


def test_run_recbole_script_flags_and_unknown_model(in_tmp):
    bad = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), "--model=Nope", "--dataset=ml-100k"],
                         capture_output=True, text=True, cwd=in_tmp, timeout=300)
    assert bad.returncode != 0 and "Unknown model 'Nope'" in bad.stderr
    missing = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), "--model=MambaRec",
                              "--dataset=ml-1m", f"--data_path={in_tmp}/nowhere"],
                             capture_output=True, text=True, cwd=in_tmp, timeout=300)
    assert missing.returncode != 0 and "dataset_prep.movielens" in missing.stderr


@pytest.mark.slow
def test_run_recbole_script_prints_checkpoint_and_writes_results(in_tmp):
    import json

    flags = ["--epochs=1", "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16", "--d_state=8",
             "--user_inter_num_interval=[20,60]", f"--checkpoint_dir={in_tmp}/ckpt", "--show_progress=False"]
    # another run's checkpoint in the same folder, newer than this run's: not the one printed
    (in_tmp / "ckpt").mkdir()
    decoy = in_tmp / "ckpt" / "MambaRec-Dec-31-2099_00-00-00.pth"
    decoy.write_bytes(b"another run")
    os.utime(decoy, (4_102_444_800, 4_102_444_800))
    run = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), "--model=MambaRec", "--dataset=ml-100k",
                          *flags, "--results", "metrics.json"], capture_output=True, text=True, cwd=in_tmp, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (ckpt,) = [p for p in (in_tmp / "ckpt").glob("MambaRec-*.pth") if p != decoy]
    assert f"checkpoint: {ckpt}" in run.stdout
    out = json.loads((in_tmp / "metrics.json").read_text())
    assert out["checkpoint"] == str(ckpt) and out["model"] == "MambaRec"
    assert 0.0 <= out["test_result"]["ndcg@10"] <= out["test_result"]["hit@10"] <= 1.0
    assert "results" not in out.get("config", {})  # --results is not passed on to RecBole


@pytest.mark.slow
def test_objective_function(in_tmp):
    from recbole.quick_start import objective_function

    cfg = tiny_config(in_tmp, model="MambaRec", dataset="ml-100k")
    res = objective_function(config_dict=cfg, saved=False)
    assert res["model"] == "MambaRec" and "ndcg@10" in res["test_result"]


@pytest.mark.cuda
def test_run_recboles_single_gpu(in_tmp):
    """RecBole's run_recboles is its multi-GPU worker: it always initialises NCCL on CUDA."""
    import torch.multiprocessing as mp
    from recbole.quick_start import run_recboles

    cfg = tiny_config(in_tmp, nproc=1, world_size=1, ip="localhost", port="29511", offset=0)
    queue = mp.get_context("spawn").SimpleQueue()
    run_recboles(0, "MoEMaTrRec", "ml-100k", None, {"config_dict": cfg, "saved": False, "queue": queue})
    assert "ndcg@10" in queue.get()["test_result"]


@pytest.mark.parametrize("train_mode", ["all_positions", "augment"])
def test_dropout_auto_follows_history_length(in_tmp, train_mode):
    """MambaRec's shipped dropout_prob: auto is 0.2 on ml-100k (~106 interactions per user) and 0.4
    on short histories (5 per user), from the training split RecBole builds the model with (whose
    rows are windows or targets, not interactions) as from the whole data set; a number is used
    as given."""
    from recbole.data import create_dataset, data_preparation

    cfg = Config(model="MambaRec", dataset="ml-100k", config_dict={"show_progress": False, "train_mode": train_mode})
    assert cfg["dropout_prob"] == "auto"
    dataset = create_dataset(cfg)
    assert MambaRec(cfg, dataset).dropout_prob == 0.2
    train = data_preparation(cfg, dataset)[0]
    assert MambaRec(cfg, train._dataset).dropout_prob == 0.2  # as run_recbole builds it
    folder = in_tmp / "data" / "short"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{(u * 7 + t) % 40 + 1}\t{t}" for u in range(1, 61) for t in range(5)]
    (folder / "short.inter").write_text("\n".join(lines) + "\n")
    short = {"data_path": str(in_tmp / "data"), "show_progress": False, "MAX_ITEM_LIST_LENGTH": 5,
             "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "user_inter_num_interval": None,
             "item_inter_num_interval": None}
    cfg = Config(model="MambaRec", dataset="short", config_dict={**short, "train_mode": train_mode})
    assert MambaRec(cfg, data_preparation(cfg, create_dataset(cfg))[0]._dataset).dropout_prob == 0.4
    cfg = Config(model="MambaRec", dataset="short", config_dict={**short, "dropout_prob": 0.25})
    assert MambaRec(cfg, create_dataset(cfg)).dropout_prob == 0.25
