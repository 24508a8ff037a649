"""The fused CPU selective scan against an independent reference, gradients, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from recbole_mamba.ops import resolve_backend, selective_scan_cpu, selective_scan_fn, selective_scan_ref


def paper_recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The Mamba paper's recurrence, element by element in float64: the test's own reference."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    nb, nd, length = u.shape
    nstate = A.shape[1]
    out = torch.zeros(nb, nd, length, dtype=torch.float64)
    last = torch.zeros(nb, nd, nstate, dtype=torch.float64)
    for b in range(nb):
        for d in range(nd):
            h = torch.zeros(nstate, dtype=torch.float64)
            for t in range(length):
                dt = delta[b, d, t] + (delta_bias[d].double() if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                h = torch.exp(dt * A[d]) * h + dt * B[b, :, t] * u[b, d, t]
                y = (h * C[b, :, t]).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t]
                if z is not None:
                    zt = z[b, d, t].double()
                    y = y * zt * torch.sigmoid(zt)
                out[b, d, t] = y
            last[b, d] = h
    return out, last


def make_inputs(nb=2, nd=3, nstate=4, length=70, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(nb, nd, length), delta=0.5 * r(nb, nd, length),
        A=-torch.rand(nd, nstate, generator=g, dtype=dtype) * 2 - 0.1,
        B=r(nb, nstate, length), C=r(nb, nstate, length), D=r(nd), z=r(nb, nd, length),
        delta_bias=0.3 * r(nd),
    )


# float64: every optional-argument combination, exact to rounding. float32: the realistic setting
# (softplus on delta, as the Mamba layer calls it), where the state decays and float32 error
# stays at rounding level. (Without softplus, delta + bias < 0 makes the state grow like
# exp(|dt*A|*t), and float32 rounding grows with it in any implementation.)
COMBOS = [(d, z, b, sp, torch.float64) for d, z, b, sp in itertools.product([False, True], repeat=4)]
COMBOS += [(d, z, b, True, torch.float32) for d, z, b in itertools.product([False, True], repeat=3)]


@pytest.mark.parametrize("use_d,use_z,use_bias,softplus,dtype", COMBOS)
def test_forward_matches_paper_recurrence(use_d, use_z, use_bias, softplus, dtype):
    x = make_inputs(length=70, dtype=dtype)  # crosses a chunk boundary (64)
    kw = dict(D=x["D"] if use_d else None, z=x["z"] if use_z else None,
              delta_bias=x["delta_bias"] if use_bias else None, delta_softplus=softplus)
    out, last = selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"], x["C"], return_last_state=True, **kw)
    ref_out, ref_last = paper_recurrence(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw)
    assert out.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(last.double(), ref_last, atol=tol, rtol=tol)


def test_all_gradients_match_reference_float32():
    x = make_inputs(nb=4, nd=8, nstate=16, length=150, seed=1)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    leaves_ref = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = selective_scan_cpu(**leaves, delta_softplus=True)
    ref = selective_scan_ref(**leaves_ref, delta_softplus=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    for k in x:
        # dA sums over batch*L terms: compare relative to its scale
        scale = max(1.0, leaves_ref[k].grad.abs().max().item())
        err = (leaves[k].grad - leaves_ref[k].grad).abs().max().item() / scale
        assert err < 1e-5, (k, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_from_the_last_position_only_match_reference(dtype):
    """A loss on the last step alone (CE on a sequence's last target): the carried gradient decays
    over hundreds of steps past float32's subnormal range and is flushed to 0 (TINY); every
    gradient still equals the reference's, relative to its scale."""
    x = make_inputs(nb=2, nd=16, nstate=16, length=300, dtype=dtype, seed=4)
    x["A"] = -torch.arange(1, 17, dtype=dtype).repeat(16, 1)  # Mamba's S4D-real init: fast decay
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    leaves_ref = {k: v.double().clone().requires_grad_() for k, v in x.items()}
    out = selective_scan_cpu(**leaves, delta_softplus=True)
    ref = selective_scan_ref(**leaves_ref, delta_softplus=True)
    grad = torch.zeros_like(ref)
    grad[:, :, -1] = torch.randn(2, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (out.double() * grad).sum().backward()
    (ref * grad).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for k in x:
        scale = max(1.0, leaves_ref[k].grad.abs().max().item())
        err = (leaves[k].grad.double() - leaves_ref[k].grad).abs().max().item() / scale
        assert err < tol, (k, err)
    # the early steps get no gradient at all, as they should not in exact arithmetic either
    assert leaves["u"].grad[:, :, 0].abs().max() < 1e-29


def test_gradcheck_float64_all_arguments():
    x = make_inputs(nb=2, nd=2, nstate=3, length=9, dtype=torch.float64, seed=2)
    args = [x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def f(u, delta, A, B, C, D, z, bias):
        out, last = selective_scan_cpu(u, delta, A, B, C, D, z, bias, True, True)
        return out, last

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


def test_gradcheck_float64_minimal_and_long_chunks():
    x = make_inputs(nb=1, nd=2, nstate=2, length=130, dtype=torch.float64, seed=3)
    x["delta"] = 0.05 * x["delta"].abs()  # no softplus here: keep dt > 0, the state decaying
    args = [x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_cpu(*a), args, eps=1e-6, atol=1e-6)


def test_non_contiguous_inputs():
    x = make_inputs(nb=2, nd=4, nstate=4, length=20)
    u_t = x["u"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not u_t.is_contiguous()
    B_nc = x["B"].transpose(1, 2).contiguous().transpose(1, 2)
    a = selective_scan_cpu(u_t, x["delta"], x["A"], B_nc, x["C"], x["D"], x["z"])
    b = selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"])
    torch.testing.assert_close(a, b)


def test_nan_propagates():
    x = make_inputs(nb=1, nd=2, nstate=4, length=5)
    x["u"][0, 0, 2] = float("nan")
    out = selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"], x["C"])
    assert torch.isnan(out[0, 0, 2:]).all() and torch.isfinite(out[0, 1]).all()


@pytest.mark.parametrize("bad,match", [
    (dict(u=torch.zeros(2, 3)), "u must be"),
    (dict(A=torch.zeros(5, 4)), "A must be"),
    (dict(B=torch.zeros(2, 4, 7)), "B must have shape"),
    (dict(D=torch.zeros(4)), "D must have shape"),
    (dict(u=torch.zeros(2, 3, 70, dtype=torch.int64)), "dtype"),
])
def test_bad_inputs_are_rejected(bad, match):
    x = make_inputs()
    x.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan_cpu(**x)


def test_dispatch_rules():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "cpu"
    assert resolve_backend("reference", cpu) == "reference"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_backend("mamba_ssm", cpu)
    with pytest.raises(ValueError, match="unknown mamba_backend"):
        resolve_backend("fast", cpu)
    x = make_inputs(length=12)
    torch.testing.assert_close(selective_scan_fn(**x, backend="reference"),
                               selective_scan_fn(**x, backend="cpu"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["layer", "contiguous"])
def test_scan_benchmark_runs_and_reports(capsys, layout):
    from recbole_mamba.bench.scan import main

    main(["--lengths", "20,40", "--batch", "2", "--dim", "4", "--state", "4", "--repeats", "1",
          "--skip-reference-above", "20", "--layout", layout])
    out = capsys.readouterr().out.splitlines()
    assert f"layout {layout}" in out[0]
    row20 = next(line for line in out if line.split()[0] == "20")
    row40 = next(line for line in out if line.split()[0] == "40")
    assert row20.split()[3].endswith("x") and float(row20.split()[-1]) < 1e-4
    ours_mib, ref_mib, ratio = row20.split()[5:8]  # peak memory measured in child processes
    assert float(ours_mib) >= 0 and float(ref_mib) >= 0
    assert ratio == "-" or float(ratio) >= 0  # "-" when the reference stayed under a page (tiny shapes)
    assert "skipped" in row40


# --------------------------------------------------------------------------- one-step update
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("with_optional", [True, False])
def test_state_update_cpu_matches_reference(dtype, tol, with_optional):
    from recbole_mamba.ops import selective_state_update_cpu, selective_state_update_ref

    g = torch.Generator().manual_seed(4)
    b, d, n = 5, 7, 16
    state = torch.randn(b, d, n, generator=g, dtype=dtype)
    x, dt, z = (torch.randn(b, d, generator=g, dtype=dtype) for _ in range(3))
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 3
    B, C = (torch.randn(b, n, generator=g, dtype=dtype) for _ in range(2))
    D, bias = torch.randn(d, generator=g, dtype=dtype), torch.randn(d, generator=g, dtype=dtype)
    opt = dict(D=D, z=z, dt_bias=bias, dt_softplus=True) if with_optional else {}
    if not with_optional:
        dt = dt.abs()
    ref_state, cpu_state = state.clone(), state.clone()
    expected = selective_state_update_ref(ref_state, x, dt, A, B, C, **opt)
    got = selective_state_update_cpu(cpu_state, x, dt, A, B, C, **opt)
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(cpu_state, ref_state, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="needs x, dt"):
        selective_state_update_cpu(state, x[:, :3], dt, A, B, C)


def test_vectorised_softplus_sigmoid_and_exp_are_float32_exact():
    """The float32 kernels' own exp, softplus and sigmoid against float64 torch: within about
    one float32 ulp (relative 3e-7) over the whole range they meet, and NaN stays NaN."""
    import numpy as np
    from numba import njit

    from recbole_mamba.ops.cpu_common import exp32, exp_row
    from recbole_mamba.ops.selective_scan_cpu import _softplus_sigmoid_row

    @njit
    def run(raw):
        n = raw.shape[0]
        out, sig, tmp, ex = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
        ex32 = np.empty(n, np.float32)
        _softplus_sigmoid_row(raw, out, sig, tmp, True, True)
        exp_row(np.float32(1.0), raw, ex, True)
        for i in range(n):
            ex32[i] = exp32(raw[i], raw)
        return out, sig, ex, ex32

    raw = np.concatenate([np.linspace(-100, 100, 400_001), [0.0, -0.0, 20.0, 88.0, -87.0]]).astype(np.float32)
    out, sig, ex, ex32 = run(raw)
    x = torch.from_numpy(raw).double()
    for got, want in ((out, torch.nn.functional.softplus(x)), (sig, torch.sigmoid(x))):
        want = want.numpy()
        ok = want > 1e-37  # float32 denormals aside
        assert np.max(np.abs(got[ok] - want[ok]) / want[ok]) < 3e-7
    inside = (raw >= -87) & (raw <= 88)
    want = torch.exp(x).numpy()[inside]
    assert np.max(np.abs(ex[inside] - want) / want) < 3e-7
    assert np.max(np.abs(ex32[inside] - want) / want) < 3e-7  # the fused-loop form, as accurate
    out, sig, ex, ex32 = run(np.array([np.nan], np.float32))
    assert np.isnan(out[0]) and np.isnan(sig[0]) and np.isnan(ex[0]) and np.isnan(ex32[0])
