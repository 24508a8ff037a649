"""The fused one-event causal low-rank attention against its torch form and the full forward."""

from __future__ import annotations

import pytest
import torch

from recbole_mamba.layers import LowRankSelfAttention
from recbole_mamba.ops import causal_lsa_step, causal_lsa_step_ref

BATCH, DIM, HEADS, INTERESTS = 5, 16, 4, 6


def _empty_state(dtype):
    top = torch.full((BATCH, INTERESTS), float("-inf"), dtype=dtype)
    return [top, torch.zeros(BATCH, INTERESTS, dtype=dtype), torch.zeros(BATCH, INTERESTS, DIM, dtype=dtype),
            top.clone(), torch.zeros(BATCH, INTERESTS, dtype=dtype), torch.zeros(BATCH, INTERESTS, DIM, dtype=dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_torch_form_over_many_events(dtype):
    gen = torch.Generator().manual_seed(0)
    fused, ref = _empty_state(dtype), _empty_state(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for step in range(40):
        q, kx, vx = (torch.randn(BATCH, DIM, generator=gen, dtype=dtype) for _ in range(3))
        # logits that rise and fall by a lot, so the running max moves both ways
        lk, lv = (torch.randn(BATCH, INTERESTS, generator=gen, dtype=dtype) * (1 + step % 7) * 3 for _ in range(2))
        out = causal_lsa_step(q, kx, vx, lk, lv, *fused, HEADS)
        expected = causal_lsa_step_ref(q, kx, vx, lk, lv, *ref, HEADS)
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
        for got, want in zip(fused, ref):
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_layer_step_equals_causal_forward_at_every_position():
    torch.manual_seed(1)
    lsa = LowRankSelfAttention(DIM, HEADS, INTERESTS, 0.0, 0.0, causal=True).eval()
    x = torch.randn(BATCH, 30, DIM)
    mask = torch.ones(BATCH, 30, dtype=torch.bool)
    with torch.no_grad():
        full = lsa(x, mask)
        _, state = lsa.forward_with_state(x[:, :1], None, mask[:, :1])
        for t in range(1, 30):
            out = lsa.step(x[:, t], state)
            torch.testing.assert_close(out, full[:, t], atol=1e-5, rtol=1e-5)


def test_gradient_goes_through_the_torch_form():
    q = torch.randn(BATCH, DIM, dtype=torch.float64, requires_grad=True)
    kx, vx = torch.randn(BATCH, DIM, dtype=torch.float64), torch.randn(BATCH, DIM, dtype=torch.float64)
    lk, lv = torch.randn(BATCH, INTERESTS, dtype=torch.float64), torch.randn(BATCH, INTERESTS, dtype=torch.float64)
    prefix = _empty_state(torch.float64)
    causal_lsa_step_ref(torch.randn(BATCH, DIM, dtype=torch.float64), kx, vx, lk, lv, *prefix, HEADS)

    def fn(q):
        state = [t.clone() for t in prefix]
        return causal_lsa_step(q, kx * 0.5, vx * 2, lk - 1, lv + 1, *state, HEADS)

    assert torch.autograd.gradcheck(fn, (q,))


def test_shape_mismatch_is_named():
    state = _empty_state(torch.float32)
    state[2] = torch.zeros(BATCH, INTERESTS, DIM + 1)
    q = torch.randn(BATCH, DIM)
    with pytest.raises(ValueError, match="total_k must have shape"):
        causal_lsa_step(q, q, q, torch.zeros(BATCH, INTERESTS), torch.zeros(BATCH, INTERESTS), *state, HEADS)
