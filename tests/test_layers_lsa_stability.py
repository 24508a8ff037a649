"""Causal low-rank attention stays finite when a prefix's pooling logits lie far below the max."""

from __future__ import annotations

import torch

from recbole_mamba.layers.lsa import LowRankSelfAttention
from recbole_mamba.ops import causal_lsa_ref


def test_causal_lsa_gradients_finite_with_wide_logit_spread():
    torch.manual_seed(0)
    lsa = LowRankSelfAttention(16, 2, 4, 0.0, 0.0, causal=True)
    with torch.no_grad():
        lsa.pool_key.theta.mul_(15.0)  # pooling logits spanning a few hundred: float32 underflows
        lsa.pool_value.theta.mul_(15.0)
    x = torch.randn(3, 12, 16, requires_grad=True)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 9:] = False
    out = lsa(x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in lsa.parameters() if p.grad is not None)
    # at these spreads (hundreds: exact in float64) the chunked torch form equals the definition
    q = lsa._heads(lsa.query(x.detach()))
    k, v = lsa.key(x.detach()), lsa.value(x.detach())
    scale = 1.0 / (lsa.head_dim ** 0.5)
    prefix = causal_lsa_ref(q.flatten(-2), k, v, lsa.pool_key.logits(k, mask), lsa.pool_value.logits(v, mask),
                            lsa.n_heads, scale).view(q.shape)
    torch.testing.assert_close(lsa._causal_by_chunks(q, k, v, mask, scale, 5)[mask], prefix[mask], rtol=1e-4, atol=1e-5)
    # and beyond float64's range (spreads of thousands) it stays finite
    with torch.no_grad():
        lsa.pool_key.theta.mul_(10.0)
    x.grad = None
    lsa(x, mask).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pooling_weights_leave_float32_only_when_the_spread_needs_it():
    from recbole_mamba.layers.lsa import FLOAT32_SAFE_SPREAD, InterestPooling

    logits = torch.randn(2, 10, 3)
    w, norm = InterestPooling._prefix(logits)
    assert w.dtype == norm.dtype == torch.float32
    wide = logits.clone()
    wide[1, 0, 2] = -(FLOAT32_SAFE_SPREAD + 30.0)  # a first position far below the row's max
    w, norm = InterestPooling._prefix(wide)
    assert w.dtype == norm.dtype == torch.float64 and norm.min() > 0
    padded = logits.masked_fill(torch.arange(10).view(1, 10, 1) >= 4, float("-inf"))
    assert InterestPooling._prefix(padded)[0].dtype == torch.float32  # padding is not a spread


def test_float32_path_matches_float64_module():
    torch.manual_seed(1)
    lsa = LowRankSelfAttention(16, 2, 4, 0.0, 0.0, causal=True).eval()
    x = torch.randn(3, 30, 16)
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        fast = lsa(x, mask)
        exact = lsa.double()(x.double(), mask)
    torch.testing.assert_close(fast.double(), exact, rtol=0, atol=2e-5)


def test_chunked_causal_form_gradcheck_float64():
    """Gradients of the chunked causal form (partial last block, padding) in float64."""
    torch.manual_seed(2)
    lsa = LowRankSelfAttention(8, 2, 3, 0.0, 0.0, causal=True).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False

    def fn(x):
        q = lsa._heads(lsa.query(x))
        return lsa._causal_by_chunks(q, lsa.key(x), lsa.value(x), mask, 0.5, 3)[mask]

    assert torch.autograd.gradcheck(fn, (x,))


def _controlled_lsa(dtype: torch.dtype) -> LowRankSelfAttention:
    """An LSA whose pooling logit at every position is x[..., 0] (identity key/value maps)."""
    torch.manual_seed(3)
    lsa = LowRankSelfAttention(8, 2, 3, 0.0, 0.0, causal=True).to(dtype)
    with torch.no_grad():
        for lin in (lsa.key, lsa.value):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
        for pool in (lsa.pool_key, lsa.pool_value):
            pool.theta.zero_()
            pool.theta[0] = 1.0
    return lsa


def test_spreads_between_44_and_60_keep_gradients_finite_and_exact():
    """Regression: a real MLSA4Rec run (ML-1M, epoch 4) had pooling spreads of 35-44. Its float32
    weights were finite, but the division by a prefix normaliser ~exp(-44) has a backward whose
    intermediate (probs / norm) / norm ~exp(88) overflows float32: NaN gradients from a finite
    loss. Such spreads must go through float64 and give float64's gradients: in the layer (the
    fused kernel on CPU) and in the chunked torch form that runs on other devices."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 40, 8, generator=g)
    x[:, :, 0] = 0.0
    x[:, :20, 0] = -50.0  # the first half's pooling logits 50 below the second half's
    mask = torch.ones(2, 40, dtype=torch.bool)

    def chunked(lsa, xi):  # the layer as it runs off CPU (no dropout here)
        q = lsa._heads(lsa.query(xi))
        ctx = lsa._causal_by_chunks(q, lsa.key(xi), lsa.value(xi), mask, 0.5, 16).reshape(xi.shape)
        return lsa.LayerNorm(ctx + xi)

    for form in (lambda lsa, xi: lsa(xi, mask), chunked):
        grads = []
        for dtype in (torch.float32, torch.float64):
            lsa = _controlled_lsa(dtype)
            xi = x.to(dtype).detach().requires_grad_()
            out = form(lsa, xi)
            out.square().sum().backward()
            assert torch.isfinite(xi.grad).all(), dtype
            assert all(torch.isfinite(p.grad).all() for p in lsa.parameters() if p.grad is not None), dtype
            grads.append(xi.grad.double())
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-3)
