"""Sparse item embeddings: the same loss and gradient as the dense table, SparseAdam touching only
the rows a batch used, RecBole's trainer driving both optimizers."""

from __future__ import annotations

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

from conftest import tiny_config
from recbole_mamba.models.losses import AUTO_SPARSE_MIN_ITEMS, RecLoss, sparse_embedding_wanted
from recbole_mamba.optim import CombinedOptimizer


@pytest.mark.parametrize("loss_type", ["SS", "gBCE", "BPR", "BCE"])
def test_sparse_rows_give_the_dense_loss_and_gradient(loss_type):
    torch.manual_seed(0)
    hidden = torch.randn(12, 8, dtype=torch.float64)
    weight = torch.randn(50, 8, dtype=torch.float64)
    targets = torch.randint(1, 50, (12,))
    out = {}
    for sparse in (False, True):
        w = weight.clone().requires_grad_()
        loss = RecLoss(loss_type, 50, {"n_negatives": 10}, sparse=sparse)
        torch.manual_seed(1)  # the same negatives
        value = loss(hidden, targets, w)
        value.backward()
        assert w.grad.is_sparse == sparse
        out[sparse] = (value.detach(), w.grad.to_dense())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0, atol=1e-12)


def test_auto_and_refusals():
    assert sparse_embedding_wanted({}, AUTO_SPARSE_MIN_ITEMS, "SS")
    assert not sparse_embedding_wanted({}, AUTO_SPARSE_MIN_ITEMS - 1, "SS")
    assert not sparse_embedding_wanted({}, 10 * AUTO_SPARSE_MIN_ITEMS, "CE")
    assert not sparse_embedding_wanted({"sparse_item_embedding": False}, 10 * AUTO_SPARSE_MIN_ITEMS, "SS")
    with pytest.raises(ValueError, match="MambaRec: sparse_item_embedding needs a sampled loss"):
        sparse_embedding_wanted({"sparse_item_embedding": True}, 100, "CE", "MambaRec")


def test_trainer_steps_only_the_rows_a_batch_used(in_tmp):
    cfg = tiny_config(in_tmp, loss_type="SS", n_negatives=16, sparse_item_embedding=True,
                      train_neg_sample_args=None)
    config = Config(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model(config["model"])(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    opt = trainer.optimizer
    assert isinstance(opt, CombinedOptimizer)
    assert [type(o).__name__ for o in opt.optimizers] == ["Adam", "SparseAdam"]
    batch = next(iter(train))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    model.calculate_loss(batch).backward()
    grad = model.item_embedding.weight.grad
    assert grad.is_sparse
    used = torch.unique(grad.coalesce().indices()[0])
    opt.step()
    emb = model.item_embedding.weight.detach()
    changed = (emb != before["item_embedding.weight"]).any(1)
    assert changed[used[used != 0]].all()
    untouched = torch.ones(len(emb), dtype=torch.bool)
    untouched[used] = False
    assert not changed[untouched].any()  # SparseAdam: rows outside the batch keep their values
    assert any((p.detach() != before[n]).any() for n, p in model.named_parameters() if n != "item_embedding.weight")
    # and RecBole's own loop trains with it
    trainer.fit(train, valid, saved=False, show_progress=False)
    state = opt.state_dict()
    assert len(state["optimizers"]) == 2
    with pytest.raises(ValueError, match="same sparse/dense"):
        opt.load_state_dict({"optimizers": state["optimizers"][:1]})
