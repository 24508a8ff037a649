"""eval_filter_seen: full-ranking evaluation of sequential models over unseen items only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import SequentialDataset
from recbole.utils import get_model, get_trainer, init_seed

from conftest import tiny_config
from recbole_mamba.config_check import ConfigError
from recbole_mamba.evaluation import seen_items


def _full_histories(config_dict: dict) -> dict[tuple[int, int], set[int]]:
    """(user, target item) -> every item the user had before that target, from RecBole's own
    materialised SequentialDataset with a window longer than any history (the reference)."""
    config = Config(model="SASRec", dataset="ml-100k", config_dict={**config_dict, "MAX_ITEM_LIST_LENGTH": 500})
    out = {}
    for split in SequentialDataset(config).build():
        feat = split.inter_feat
        for user, item, items, n in zip(feat["user_id"].tolist(), feat["item_id"].tolist(),
                                        feat["item_id_list"].tolist(), feat["item_length"].tolist()):
            out[(user, item)] = set(items[:n])
    return out


@pytest.mark.parametrize("model", ["MambaRec", "BERT4Rec"])
def test_seen_items_are_the_whole_history(in_tmp, model):
    """Our datasets give every earlier item, beyond the L=3 window the model reads; RecBole's own
    SequentialDataset (BERT4Rec) gives the window."""
    cfg = tiny_config(in_tmp, MAX_ITEM_LIST_LENGTH=3)
    dataset = create_dataset(Config(model=model, dataset="ml-100k", config_dict=cfg))
    reference = _full_histories(cfg)
    longer = 0
    for split in dataset.build()[1:]:
        rows = split[np.arange(len(split))]
        row, item = seen_items(split, rows)
        assert len(row) == len(item)
        for i, (user, target) in enumerate(zip(rows["user_id"].tolist(), rows["item_id"].tolist())):
            got = set(item[row == i].tolist())
            window = set(rows["item_id_list"][i].tolist()) - {0}
            expected = reference[(user, target)] if model == "MambaRec" else window
            assert got == expected, (user, target)
            longer += len(reference[(user, target)]) > 3
    assert longer > 100  # the windows really are shorter than the histories


def _manual_metrics(model, loader, histories, filtered: bool) -> dict[str, float]:
    """HR@10 and NDCG@10 from the model's scores, masking each row's history by hand."""
    hits, ndcgs = [], []
    for interaction, _, _, positive_i in loader:
        with torch.no_grad():
            scores = model.full_sort_predict(interaction).view(len(interaction), -1).clone()
        scores[:, 0] = -torch.inf
        for i, (user, target) in enumerate(zip(interaction["user_id"].tolist(), interaction["item_id"].tolist())):
            if filtered:
                scores[i, list(histories[(user, target)])] = -torch.inf
            rank = int((scores[i] > scores[i, target]).sum())
            hits.append(rank < 10)
            ndcgs.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    return {"hit@10": float(np.mean(hits)), "ndcg@10": float(np.mean(ndcgs))}


def test_trainer_metrics_equal_a_hand_computation(in_tmp):
    """RecBole's Trainer.evaluate with eval_filter_seen True ranks unseen items only (equal to a hand
    computation over the whole history); with False it ranks every item, as RecBole does."""
    cfg = tiny_config(in_tmp, MAX_ITEM_LIST_LENGTH=5, epochs=2)
    config = Config(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    model.eval()
    histories = _full_histories(cfg)
    results = {}
    for filtered in (False, True):
        config["eval_filter_seen"] = filtered
        for name, loader in (("valid", valid), ("test", test)):
            got = trainer.evaluate(loader, load_best_model=False, show_progress=False)
            want = _manual_metrics(model, loader, histories, filtered)
            for k, v in want.items():
                assert abs(got[k] - v) < 1e-4, (filtered, name, k, got[k], v)
            results[filtered, name] = got
    for name in ("valid", "test"):
        assert results[True, name]["hit@10"] >= results[False, name]["hit@10"]
        assert results[True, name]["ndcg@10"] > results[False, name]["ndcg@10"]


def test_eval_filter_seen_must_be_boolean(in_tmp):
    with pytest.raises(ConfigError, match="eval_filter_seen must be True or False"):
        Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(in_tmp, eval_filter_seen="yes"))


def test_sampled_evaluation_draws_the_same_negatives_every_pass(in_tmp):
    """uni100: two evaluations of one model give the same metrics whatever NumPy's global state
    was before (each pass seeds it with config['seed']), and that state is restored after."""
    cfg = tiny_config(in_tmp, eval_args={"split": {"LS": "valid_and_test"}, "order": "TO",
                                         "group_by": "user", "mode": "uni100"}, metric_decimal_place=8)
    config = Config(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert type(test).__name__ == "NegSampleEvalDataLoader"
    model = get_model(config["model"])(config, train._dataset).to(config["device"]).eval()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    runs = []
    for before in (1, 2):
        np.random.seed(before)  # a different global state before each pass
        state = np.random.get_state()
        runs.append(trainer.evaluate(test, load_best_model=False, show_progress=False))
        after = np.random.get_state()
        assert after[1].tolist() == state[1].tolist() and after[2] == state[2]
    assert runs[0] == runs[1]
    assert 0 < runs[0]["ndcg@10"] <= runs[0]["hit@10"] < 1
