"""The one-step causal convolution: the numba kernel against the torch form, state included."""

from __future__ import annotations

import pytest
import torch

from recbole_mamba.ops import causal_conv1d_update, causal_conv1d_update_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias,silu", [(True, True), (False, True), (True, False)])
def test_kernel_matches_torch_form_over_many_steps(dtype, bias, silu):
    g = torch.Generator().manual_seed(0)
    batch, dim, width = 5, 7, 4
    weight = torch.randn(dim, width, generator=g, dtype=dtype)
    b = torch.randn(dim, generator=g, dtype=dtype) if bias else None
    s_fast = torch.randn(batch, dim, width, generator=g, dtype=dtype)
    s_ref = s_fast.clone()
    with torch.no_grad():
        for _ in range(6):
            x = torch.randn(batch, dim, generator=g, dtype=dtype)
            out = causal_conv1d_update(x, s_fast, weight, b, silu)
            ref = causal_conv1d_update_ref(x, s_ref, weight, b, silu)
            tol = 1e-6 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            torch.testing.assert_close(s_fast, s_ref, atol=0, rtol=0)  # the shift is exact
            assert out.dtype == dtype


def test_gradient_goes_through_the_torch_form():
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, w: causal_conv1d_update(x, state.clone(), w, None, True), (x, weight))


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"x must have shape \(2, 3\)"):
        with torch.no_grad():
            causal_conv1d_update(torch.randn(2, 5), torch.randn(2, 3, 4), torch.randn(3, 4))
