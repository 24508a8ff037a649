"""Each model through RecBole's real pipeline on ml-100k; checkpoints; losses."""

from __future__ import annotations

import glob

import pytest
import torch
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils.case_study import full_sort_topk

from conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model,extra", [
    ("MambaRec", {}),  # shipped YAML: BCE, all_positions
    ("MambaRec", {"mamba_variant": "attention", "loss_type": "CE", "train_neg_sample_args": None,
                  "train_mode": "augment"}),
    ("MoEMaTrRec", {"loss_type": "BPR"}),
    ("MLSA4Rec", {}),  # shipped YAML: CE, augment
    ("MLSA4Rec", {"train_mode": "all_positions", "train_windows": "last"}),
])
def test_train_evaluate_reload(in_tmp, model, extra):
    cfg = tiny_config(in_tmp, **extra)
    result = run_recbole(model=model, dataset="ml-100k", config_dict=cfg)
    test = result["test_result"]
    assert set(test) >= {"hit@10", "ndcg@10", "mrr@10"}
    assert 0.0 <= test["ndcg@10"] <= test["hit@10"] <= 1.0
    ckpt = glob.glob(str(in_tmp / "saved" / f"{model}-*.pth"))
    assert len(ckpt) == 1
    config, net, dataset, train_data, valid_data, test_data = load_data_and_model(ckpt[0])
    assert type(net).__name__ == model
    tokens = list(dataset.field2id_token[dataset.uid_field][1:4])  # three real users
    uid_series = dataset.token2id(dataset.uid_field, tokens)
    scores, items = full_sort_topk(uid_series, net, test_data, k=10, device=config["device"])
    assert items.shape == (3, 10) and torch.isfinite(scores).all()


def test_uni100_sampled_evaluation(in_tmp):
    cfg = tiny_config(in_tmp, eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100"})
    result = run_recbole(model="MambaRec", dataset="ml-100k", config_dict=cfg, saved=False)
    assert result["test_result"]["hit@10"] > 0.05  # 10 of 101 candidates: random is ~0.1


def test_nan_loss_gives_clear_error(in_tmp):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_mamba import MambaRec

    cfg = Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(in_tmp))
    train, _, _ = data_preparation(cfg, create_dataset(cfg))
    net = MambaRec(cfg, train._dataset)
    with torch.no_grad():
        net.item_embedding.weight[1:] = float("nan")
    batch = next(iter(train))
    with pytest.raises(FloatingPointError, match="not finite"):
        net.calculate_loss(batch)
