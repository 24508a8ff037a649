"""The Mamba mixer: mamba-ssm's parameter layout, padding invariance, step vs full forward."""

from __future__ import annotations

import math

import pytest
import torch

from recbole_mamba.layers import Mamba

# mamba_ssm.modules.mamba_simple.Mamba(d_model, d_state, d_conv, expand), bias=False,
# conv_bias=True: its state dict, name -> shape (from mamba-ssm 2.x's source).
def mamba_ssm_layout(d_model, d_state, d_conv, expand):
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def test_state_dict_has_mamba_ssm_names_and_shapes():
    m = Mamba(d_model=64, d_state=32, d_conv=4, expand=2)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == mamba_ssm_layout(64, 32, 4, 2)


def test_state_dict_round_trip_through_mamba_ssm_layout():
    torch.manual_seed(0)
    a = Mamba(d_model=32, d_state=8)
    foreign = {k: v.clone() for k, v in a.state_dict().items()}  # what mamba-ssm would save
    b = Mamba(d_model=32, d_state=8)
    b.load_state_dict(foreign, strict=True)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(a(x), b(x))


def test_mamba_ssm_init_conventions():
    m = Mamba(d_model=32, d_state=8, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log.exp()[0], torch.arange(1, 9, dtype=torch.float32))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(m.D == 1)


@pytest.mark.cuda
def test_state_dict_loads_into_real_mamba_ssm():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple")
    ours = Mamba(d_model=32, d_state=16).cuda()
    theirs = mamba_simple.Mamba(d_model=32, d_state=16).cuda()
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 50, 32, device="cuda")
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


def test_padding_never_changes_real_positions():
    torch.manual_seed(0)
    m = Mamba(d_model=16, d_state=8).eval()
    x = torch.randn(3, 20, 16)
    lengths = [20, 13, 5]
    y = m(x)
    x2 = x.clone()
    for i, n in enumerate(lengths):
        x2[i, n:] = torch.randn(20 - n, 16) * 10  # different padding content
    y2 = m(x2)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(y[i, :n], y2[i, :n])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_step_equals_full_forward(backend):
    torch.manual_seed(1)
    m = Mamba(d_model=16, d_state=8, d_conv=4, backend=backend).eval()
    x = torch.randn(2, 9, 16)
    full = m(x)
    conv_state, ssm_state = m.allocate_inference_cache(batch_size=2, max_seqlen=9)
    assert conv_state.shape == (2, 32, 4) and ssm_state.shape == (2, 32, 8)
    outs = []
    for t in range(9):
        out, conv_state, ssm_state = m.step(x[:, t : t + 1], conv_state, ssm_state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_gradients_flow_to_every_parameter():
    m = Mamba(d_model=16, d_state=4)
    m(torch.randn(2, 7, 16)).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_wrong_input_shape_is_rejected():
    m = Mamba(d_model=16)
    with pytest.raises(ValueError, match="d_model=16"):
        m(torch.randn(2, 7, 8))
