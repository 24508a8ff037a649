"""The whole-sequence causal convolution + SiLU (channels-last numba kernels) against torch's
conv1d, gradients included, and the Mamba layer's CPU path against its general path."""

from __future__ import annotations

import pytest
import torch

from recbole_mamba.layers import Mamba
from recbole_mamba.ops import causal_conv1d_silu, causal_conv1d_silu_ref
from recbole_mamba.ops.causal_conv1d import TIME_BLOCK


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 3, TIME_BLOCK, TIME_BLOCK + 5, 3 * TIME_BLOCK + 1])
@pytest.mark.parametrize("bias,silu", [(True, True), (False, True), (True, False)])
def test_kernel_matches_torch_conv1d_values_and_gradients(dtype, length, bias, silu):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, 9, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=dtype, requires_grad=True) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    out = causal_conv1d_silu(x, w, b, silu)
    ref = causal_conv1d_silu_ref(x, w, b, silu)
    grad = torch.randn(out.shape, generator=g, dtype=dtype)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad)
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    for name, a, r in zip(("dx", "dweight", "dbias"), got, want):
        torch.testing.assert_close(a, r, atol=tol * length ** 0.5, rtol=tol, msg=name)
    assert out.dtype == dtype and out.shape == x.shape


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, TIME_BLOCK + 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_silu(x, w, b), (x, w, b))


def test_causal_future_inputs_change_nothing_before():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 20, 6, generator=g)
    w, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    y = causal_conv1d_silu(x, w, b)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 8, 6, generator=g)
    torch.testing.assert_close(causal_conv1d_silu(x2, w, b)[:, :12], y[:, :12], atol=0, rtol=0)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"x must be \(batch, L, dim\)"):
        causal_conv1d_silu(torch.randn(2, 5, 3), torch.randn(4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mamba_cpu_channels_last_path_equals_general_path(dtype):
    torch.manual_seed(0)
    layer = Mamba(16, d_state=8, dtype=dtype)
    assert layer._uses_cpu_kernels(torch.zeros(1, 1, 16, dtype=dtype))
    x = torch.randn(3, 37, 16, dtype=dtype, requires_grad=True)
    fast = layer._forward_cpu_kernels(x)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x, *layer.parameters()])
    general = layer._forward_general(x)
    grads_general = torch.autograd.grad(general.square().sum(), [x, *layer.parameters()])
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(fast, general, atol=tol, rtol=tol)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, a, r in zip(names, grads_fast, grads_general):
        torch.testing.assert_close(a, r, atol=tol * 10, rtol=tol * 10, msg=name)
