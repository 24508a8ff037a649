"""The Triton selective scan against the plain reference: outputs and every gradient.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1);
the same tests run compiled on CUDA where one is present.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from recbole_mamba.layers import Mamba  # noqa: E402
from recbole_mamba.ops import resolve_backend, selective_scan_fn, selective_scan_ref  # noqa: E402
from recbole_mamba.ops.selective_scan_triton import interpreter_on, selective_scan_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(b, d, n, length, dtype, optional, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = {"u": r(b, d, length), "delta": r(b, d, length) * 0.5, "A": -torch.rand(d, n, generator=g) * 2,
         "B": r(b, n, length), "C": r(b, n, length)}
    if optional:
        x.update(D=r(d), z=r(b, d, length), delta_bias=r(d) * 0.3)
    else:
        x["delta"] = x["delta"].abs()  # no softplus: keep the steps positive
    low = {"u", "delta", "B", "C", "z"}  # the inputs mamba-ssm takes in half precision
    return {k: (v.to(dtype) if k in low else v).to(DEVICE) for k, v in x.items()}


def run(fn, x, softplus, grads=True):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out, last = fn(**leaves, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator().manual_seed(9)
    gout = torch.randn(out.shape, generator=g).to(out.device)
    glast = torch.randn(last.shape, generator=g).to(out.device)
    ((out.float() * gout).sum() + (last.float() * glast).sum()).backward()
    return out.float(), last.float(), {k: v.grad.float() for k, v in leaves.items()}


@pytest.mark.parametrize("shape", [(2, 40, 5, 19), (1, 8, 16, 33), (3, 4, 1, 1)])
@pytest.mark.parametrize("optional", [True, False])
def test_float32_matches_reference(shape, optional):
    x = make_inputs(*shape, torch.float32, optional)
    tri = run(lambda **k: selective_scan_triton(**k, chunk=8), x, optional)
    ref = run(selective_scan_ref, x, optional)
    torch.testing.assert_close(tri[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tri[1], ref[1], atol=1e-4, rtol=1e-4)
    for name in x:
        scale = max(1.0, float(ref[2][name].abs().max()))
        assert float((tri[2][name] - ref[2][name]).abs().max()) <= 1e-4 * scale, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    x = make_inputs(2, 8, 4, 12, dtype, True, seed=3)
    tri = run(lambda **k: selective_scan_triton(**k, chunk=8), x, True)
    # the reference on the same (rounded) inputs in float32
    ref = run(selective_scan_ref, {k: v.float() for k, v in x.items()}, True)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3  # the output is stored in the input dtype
    torch.testing.assert_close(tri[0], ref[0], atol=tol * max(1.0, float(ref[0].abs().max())), rtol=0)
    torch.testing.assert_close(tri[1], ref[1], atol=1e-4, rtol=1e-4)  # the state stays float32


def test_empty_sequence_and_bad_dtype():
    x = make_inputs(1, 4, 2, 0, torch.float32, True)
    out, last = selective_scan_triton(**x, delta_softplus=True, return_last_state=True)
    assert out.shape == (1, 4, 0) and float(last.abs().max()) == 0.0
    x = make_inputs(1, 4, 2, 3, torch.float32, False)
    with pytest.raises(ValueError, match="float32, float16 and bfloat16"):
        selective_scan_triton(**{**x, "u": x["u"].double()})
    with pytest.raises(ValueError, match="delta must have shape"):
        selective_scan_triton(**{**x, "delta": x["delta"][:, :, :2]})


def test_dispatch_rules(monkeypatch):
    from recbole_mamba.ops import backend as dispatch

    monkeypatch.setattr(dispatch, "mamba_ssm_scan", lambda: None)
    assert resolve_backend("auto", torch.device("cuda")) == "triton"  # no mamba-ssm: ours
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    if DEVICE == "cpu":
        assert interpreter_on()
        assert resolve_backend("triton", torch.device("cpu")) == "triton"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="'triton' needs CUDA tensors"):
            resolve_backend("triton", torch.device("cpu"))


def test_mamba_layer_on_the_triton_backend_matches_cpu():
    torch.manual_seed(0)
    layer = Mamba(d_model=8, d_state=4, d_conv=3, expand=2, backend="triton").to(DEVICE)
    x = torch.randn(2, 11, 8, device=DEVICE, requires_grad=True)
    out = layer(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.backend = "reference"
    x2 = x.detach().clone().requires_grad_()
    ref = layer(x2)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_long_sequence_matches_reference():
    x = make_inputs(4, 64, 16, 300, torch.float32, True, seed=5)
    tri = run(selective_scan_triton, x, True)
    ref = run(lambda **k: selective_scan_fn(**k, backend="reference"), x, True)
    torch.testing.assert_close(tri[0], ref[0], atol=1e-4, rtol=1e-4)
    for name in x:
        scale = max(1.0, float(ref[2][name].abs().max()))
        assert float((tri[2][name] - ref[2][name]).abs().max()) <= 1e-4 * scale, name
