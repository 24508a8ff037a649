"""The counter-based CPU dropout: its mask, scaling, gradients, seeding and the module wrapper."""

from __future__ import annotations

import pytest
import torch

from recbole_mamba.layers import Dropout
from recbole_mamba.ops import dropout_cpu, dropout_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_is_input_times_mask_over_keep_probability(dtype):
    x = torch.randn(4, 33, 17, dtype=dtype)
    out = dropout_cpu(x, 0.3, seed=11)
    mask = dropout_mask(x.shape, 0.3, 11)
    scale = torch.tensor(1.0 / 0.7, dtype=dtype)
    assert torch.equal(out, torch.where(mask, x * scale, torch.zeros((), dtype=dtype)))
    assert out.dtype == dtype and out.shape == x.shape


def test_keep_rate_and_independence():
    mask = dropout_mask((1_000_000,), 0.2, 3).double()
    assert abs(mask.mean().item() - 0.8) < 0.002  # 5 sigma of a binomial at n = 1e6
    neighbours = torch.corrcoef(torch.stack([mask[:-1], mask[1:]]))[0, 1]
    assert abs(neighbours.item()) < 0.005
    other = dropout_mask((1_000_000,), 0.2, 4).double()
    assert abs(torch.corrcoef(torch.stack([mask, other]))[0, 1].item()) < 0.005


def test_gradient_is_the_same_mask_and_gradcheck():
    x = torch.randn(6, 40, requires_grad=True)
    dropout_cpu(x, 0.5, seed=7).sum().backward()
    assert torch.equal(x.grad, dropout_mask(x.shape, 0.5, 7).float() * 2.0)
    xd = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dropout_cpu(t, 0.25, seed=2), (xd,))


def test_seeded_by_torch_generator_and_fresh_per_call():
    x = torch.randn(1000)
    torch.manual_seed(5)
    a, b = dropout_cpu(x, 0.5), dropout_cpu(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(dropout_cpu(x, 0.5), a)
    assert not torch.equal(a, b)


def test_non_contiguous_input():
    x = torch.randn(20, 30).t()
    out = dropout_cpu(x, 0.4, seed=1)
    assert torch.equal(out, dropout_cpu(x.contiguous(), 0.4, seed=1))


def test_module_is_a_drop_in_nn_dropout():
    drop = Dropout(0.3)
    assert isinstance(drop, torch.nn.Dropout) and drop.state_dict() == {}
    x = torch.randn(8, 50)
    assert torch.equal(drop.eval()(x), x)  # eval: identity
    drop.train()
    torch.manual_seed(0)
    out = drop(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
    assert 0.5 < kept.float().mean() < 0.9
    assert torch.equal(Dropout(0.0).train()(x), x)
    half = x.to(torch.bfloat16)  # other dtypes: torch's own dropout
    assert Dropout(0.3).train()(half).dtype == torch.bfloat16
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_probability_rejected(p):
    with pytest.raises(ValueError, match="p must be in"):
        dropout_cpu(torch.randn(3), p)


def test_bad_tensor_rejected():
    with pytest.raises(ValueError, match="float32/float64"):
        dropout_cpu(torch.ones(3, dtype=torch.int64), 0.1)


def test_nan_and_inf_propagate_as_with_torch():
    """x * mask as torch's dropout: a NaN stays NaN even where dropped (the models' NaN-loss check
    relies on NaN reaching the loss), inf becomes NaN where dropped; no fast-math on NaN/inf."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 64)
    out = dropout_cpu(x, 0.5, seed=3)
    kept = dropout_mask(x.shape, 0.5, 3)
    torch.testing.assert_close(out, x * kept / 0.5, equal_nan=True)
    assert torch.isnan(out[torch.isnan(x)]).all() and (~kept[torch.isnan(x)]).any()
    assert torch.isinf(out[kept & torch.isinf(x)]).all()
