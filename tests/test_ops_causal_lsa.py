"""The fused CPU causal low-rank attention against the torch forms of LowRankSelfAttention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recbole_mamba.layers import LowRankSelfAttention
from recbole_mamba.ops import causal_lsa, causal_lsa_ref, dropout_mask

DIM, HEADS, INTERESTS = 16, 4, 5


def _inputs(lsa: LowRankSelfAttention, x: torch.Tensor, mask: torch.Tensor):
    """(q (b, L, D), key, value, logit_k, logit_v) as the layer computes them."""
    key, value = lsa.key(x), lsa.value(x)
    return (lsa.query(x), key, value, lsa.pool_key.logits(key, mask), lsa.pool_value.logits(value, mask))


def _mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length - 6:] = False  # padding at the end, as RecBole pads
    mask[2, 1:] = False  # one real item (position 0 stays real: every prefix has one)
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 31, 32, 70])  # below, at and across the checkpoint chunk
def test_forward_and_gradients_match_the_definition(dtype, length):
    torch.manual_seed(length)
    lsa = LowRankSelfAttention(DIM, HEADS, INTERESTS, 0.0, 0.0, causal=True).to(dtype)
    x = torch.randn(3, length, DIM, dtype=dtype)
    mask = _mask(3, length) if length > 6 else torch.ones(3, length, dtype=torch.bool)
    scale = 1.0 / math.sqrt(DIM // HEADS)
    q, k, v, lk, lv = (t.detach().requires_grad_() for t in _inputs(lsa, x, mask))
    ref = causal_lsa_ref(q, k, v, lk, lv, HEADS, scale)
    out = causal_lsa(q, k, v, lk, lv, HEADS)
    if length > 6:  # and the layer's own torch form (the one used off CPU)
        chunks = lsa._causal_by_chunks(lsa._heads(q), k, v, mask, scale, 16).reshape(x.shape)
        torch.testing.assert_close(out[mask], chunks[mask], rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[mask], ref[mask], **tol)
    grad = torch.randn_like(out) * mask.unsqueeze(-1)
    expect = torch.autograd.grad((ref * grad).sum(), (q, k, v, lk, lv))
    got = torch.autograd.grad((out * grad).sum(), (q, k, v, lk, lv))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for name, a, b in zip(("q", "key", "value", "logit_k", "logit_v"), got, expect):
        torch.testing.assert_close(a[mask], b[mask], **tol, msg=lambda m: f"d{name}: {m}")
    assert torch.isfinite(torch.stack([g.abs().sum() for g in got])).all()


def test_gradcheck_float64_with_padding_and_dropout():
    torch.manual_seed(0)
    shapes = [(2, 9, 8), (2, 9, 8), (2, 9, 8), (2, 9, 3), (2, 9, 3)]
    tensors = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    pad = torch.zeros(2, 9, 1, dtype=torch.bool)
    pad[1, 6:] = True

    def fn(q, k, v, lk, lv):
        return causal_lsa(q, k, v, lk.masked_fill(pad, float("-inf")), lv.masked_fill(pad, float("-inf")),
                          2, dropout=0.3, seed=5)

    assert torch.autograd.gradcheck(fn, tuple(tensors))


class _FixedMask(nn.Module):
    """Applies a given dropout mask (the kernel's, from ``dropout_mask``) to (b, L, H, P) weights."""

    def __init__(self, mask: torch.Tensor, p: float) -> None:
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs * self.mask / (1.0 - self.p)


def test_attention_dropout_is_the_documented_mask():
    torch.manual_seed(3)
    lsa = LowRankSelfAttention(DIM, HEADS, INTERESTS, 0.0, 0.0, causal=True).double()
    x = torch.randn(3, 20, DIM, dtype=torch.float64)
    mask = _mask(3, 20)
    q, k, v, lk, lv = _inputs(lsa, x, mask)
    out = causal_lsa(q, k, v, lk, lv, HEADS, dropout=0.4, seed=9)
    lsa.attn_dropout = _FixedMask(dropout_mask((3, 20, HEADS, INTERESTS), 0.4, 9), 0.4)
    ref = causal_lsa_ref(q, k, v, lk, lv, HEADS, 0.5, drop=lsa.attn_dropout)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out, causal_lsa(q, k, v, lk, lv, HEADS))


def test_float32_exact_at_any_logit_spread():
    """The online softmax needs no float64: spreads of thousands stay finite and exact."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 40, DIM) for _ in range(3))
    lk, lv = torch.randn(2, 40, INTERESTS) * 800.0, torch.randn(2, 40, INTERESTS) * 800.0
    args32 = [t.clone().requires_grad_() for t in (q, k, v, lk, lv)]
    args64 = [t.double().requires_grad_() for t in (q, k, v, lk, lv)]
    out32, out64 = causal_lsa(*args32, HEADS), causal_lsa(*args64, HEADS)
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)
    out32.sum().backward()
    out64.sum().backward()
    for a, b in zip(args32, args64):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-3, atol=1e-3)


def test_layer_on_cpu_equals_its_chunked_torch_form_in_training():
    torch.manual_seed(5)
    lsa = LowRankSelfAttention(DIM, HEADS, INTERESTS, 0.0, 0.0, causal=True).train()
    x = torch.randn(3, 45, DIM)
    mask = _mask(3, 45)
    out = lsa(x, mask)
    q = lsa._heads(lsa.query(x))
    ctx = lsa._causal_by_chunks(q, lsa.key(x), lsa.value(x), mask, 0.5, 16).reshape(x.shape)
    ref = lsa.LayerNorm(ctx + x)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out) * mask.unsqueeze(-1)
    params = [p for n, p in lsa.named_parameters() if not n.startswith("LayerNorm")]
    got = torch.autograd.grad((out * g).sum(), params)
    expect = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_inputs_rejected():
    q = torch.randn(2, 5, 8)
    lk = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="key_x must have shape"):
        causal_lsa(q, torch.randn(2, 4, 8), q, lk, lk, 2)
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        causal_lsa(q, q, q, lk, lk, 3)
    with pytest.raises(ValueError, match="float32/float64"):
        causal_lsa(q.half(), q, q, lk, lk, 2)
    with pytest.raises(ValueError, match="dropout must be in"):
        causal_lsa(q, q, q, lk, lk, 2, dropout=1.0)
