"""Full-ranking top-k over chunks of the catalogue: equal to torch.topk / RecBole's dense path."""

from __future__ import annotations

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

from conftest import shared_data_dir, tiny_config
from recbole_mamba.evaluation import TopKScores
from recbole_mamba.ops.topk import chunk_for, chunked_topk


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_topk_equals_dense_topk(chunk):
    g = torch.Generator().manual_seed(0)
    query, items = torch.randn(13, 8, generator=g, dtype=torch.float64), torch.randn(300, 8, generator=g, dtype=torch.float64)
    rows = torch.randint(0, 13, (200,), generator=g)
    ids = torch.randint(0, 300, (200,), generator=g)
    dense = query @ items.t()
    dense[:, 0] = -torch.inf
    dense[rows, ids] = -torch.inf
    want_v, want_i = dense.topk(10, dim=1)
    got_v, got_i = chunked_topk(query, items, 10, chunk, exclude=(rows, ids), exclude_items=torch.tensor([0]))
    assert torch.equal(got_i, want_i)
    # a chunk's product may take another BLAS kernel (gemv for one column, a different blocking on
    # another CPU) than the whole matrix, so the scores agree to float64 rounding, not bit for bit
    torch.testing.assert_close(got_v, want_v, rtol=1e-13, atol=1e-13)
    assert not torch.isin(got_i, torch.tensor([0])).any()


@pytest.mark.parametrize("block, tile", [(4, 16), (5, 40), (13, 1 << 22)])
def test_chunked_topk_tiles_over_queries_and_items(monkeypatch, block, tile):
    """Query blocks and item tiles smaller than the call's chunk (the exclusions found per block and
    tile, rows re-ranked only where a tile beats their k-th best) give the dense top-k."""
    import recbole_mamba.ops.topk as topk_mod
    monkeypatch.setattr(topk_mod, "USER_BLOCK", block)
    monkeypatch.setattr(topk_mod, "TILE_SCORES", tile)
    g = torch.Generator().manual_seed(1)
    query, items = torch.randn(13, 8, generator=g, dtype=torch.float64), torch.randn(500, 8, generator=g, dtype=torch.float64)
    rows = torch.randint(0, 13, (400,), generator=g)
    ids = torch.randint(0, 500, (400,), generator=g)
    # a query whose first tile is wholly excluded: its running list starts at -inf
    rows = torch.cat([rows, torch.full((20,), 12)])
    ids = torch.cat([ids, torch.arange(20)])
    dense = query @ items.t()
    dense[:, 0] = -torch.inf
    dense[rows, ids] = -torch.inf
    want_v, want_i = dense.topk(10, dim=1)
    got_v, got_i = topk_mod.chunked_topk(query, items, 10, 100, exclude=(rows, ids), exclude_items=torch.tensor([0]))
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_v, want_v, rtol=1e-13, atol=1e-13)


def test_chunked_topk_rejects_bad_arguments():
    q, w = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        chunked_topk(q, w, 6, 2)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_topk(q, w, 2, 0)
    with pytest.raises(ValueError, match=r"query \(B, D\) and items \(N, D\)"):
        chunked_topk(q, torch.randn(5, 3), 2, 2)


def test_chunk_for_bounds_the_scores_held():
    assert chunk_for(4096, budget=1 << 25) * 4096 <= 1 << 25
    assert chunk_for(0) >= 1


def _trained(cfg: dict, model: str, dataset: str = "ml-100k", fit: bool = True):
    config = Config(model=model, dataset=dataset, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    net = get_model(config["model"])(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    if fit:
        trainer.fit(train, valid, saved=False, show_progress=False)
    return config, trainer, valid, test


def _metrics_dense_and_chunked(config, trainer, loaders, chunk):
    out = {}
    for name, loader in loaders:
        config["eval_item_chunk"] = None
        dense = trainer.evaluate(loader, load_best_model=False)
        config["eval_item_chunk"] = chunk
        batch = next(iter(loader))
        assert isinstance(trainer._full_sort_batch_eval(batch)[1], TopKScores)  # the chunked path ran
        chunked = trainer.evaluate(loader, load_best_model=False)
        out[name] = (dense, chunked)
    return out


@pytest.mark.parametrize("model,filter_seen", [("MambaRec", False), ("MambaRec", True), ("SASRec", True)])
def test_chunked_metrics_equal_recbole_dense_ml100k(in_tmp, model, filter_seen):
    cfg = tiny_config(in_tmp, metrics=["Hit", "NDCG", "MRR", "Recall", "Precision", "MAP"], topk=[5, 10],
                      metric_decimal_place=10, eval_filter_seen=filter_seen)
    config, trainer, valid, test = _trained(cfg, model)
    for name, (dense, chunked) in _metrics_dense_and_chunked(config, trainer, [("valid", valid), ("test", test)], 97).items():
        assert dense.keys() == chunked.keys()
        for k in dense:
            assert abs(dense[k] - chunked[k]) <= 1e-6, (name, k, dense[k], chunked[k])
        assert dense["hit@10"] > 0


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
def test_chunked_metrics_equal_recbole_dense_ml1m(in_tmp):
    """The ML-1M ratings half (2,999 users, 3,615 items), an untrained MambaRec at L=50."""
    from dataset_prep.movielens import main as convert

    convert(["--input", str(shared_data_dir() / "ml-1m" / "ratings.users_1-2999.dat"),
             "--output-dir", str(in_tmp / "data" / "ml1h")])
    cfg = tiny_config(in_tmp, user_inter_num_interval=None, data_path=str(in_tmp / "data"),
                      MAX_ITEM_LIST_LENGTH=50, metric_decimal_place=10, eval_batch_size=1024)
    cfg.update({"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "eval_filter_seen": True})
    config, trainer, valid, test = _trained(cfg, "MambaRec", dataset="ml1h", fit=False)
    assert valid._dataset.item_num > 3000
    for name, (dense, chunked) in _metrics_dense_and_chunked(config, trainer, [("test", test)], 500).items():
        for k in dense:
            assert abs(dense[k] - chunked[k]) <= 1e-6, (name, k, dense[k], chunked[k])


@pytest.mark.parametrize("model", ["MambaRec", "MLSA4Rec", "SASRec", "GRU4Rec"])
def test_user_vectors_in_sub_batches_give_full_sort_predict(in_tmp, model):
    from recbole_mamba.evaluation import dot_product_vectors

    config, trainer, valid, _ = _trained(tiny_config(in_tmp), model, fit=False)
    trainer.model.eval()
    interaction = next(iter(valid))[0]
    with torch.no_grad():
        users, items = dot_product_vectors(trainer.model, interaction, max_positions=3 * config["MAX_ITEM_LIST_LENGTH"])
        want = trainer.model.full_sort_predict(interaction)
    assert len(users) == len(interaction) > 3
    torch.testing.assert_close(users @ items.t(), want.view(len(interaction), -1), rtol=1e-5, atol=1e-5)
