"""One backend decision: ``reference`` runs no custom kernel in any op of any model, and a backend
that cannot run here raises the same error in every op, in training, evaluation and one-step."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from recbole.config import Config

from recbole_mamba import MambaRec, MLSA4Rec, MoEMaTrRec
from recbole_mamba.layers import Dropout, LowRankSelfAttention, Mamba, set_backend
from recbole_mamba.ops import BACKENDS, causal_conv1d_silu, causal_conv1d_update, resolve_backend, runs_cpu_kernels

from conftest import tiny_config

MODELS = [MambaRec, MoEMaTrRec, MLSA4Rec]


def _build(model_cls, dataset, backend: str):
    cfg = Config(model=model_cls.__name__, dataset="ml-100k",
                 config_dict=tiny_config(Path(dataset.config["checkpoint_dir"]).parent,
                                         MAX_ITEM_LIST_LENGTH=12, mamba_backend=backend))
    torch.manual_seed(0)
    return model_cls(cfg, dataset)


def _forbid_kernels(monkeypatch):
    """Make every fused CPU kernel raise when called (our own ops, not torch's or RecBole's)."""
    # by import_module: the package re-exports functions named like their modules
    # (``recbole_mamba.ops.causal_lsa`` is also the function), as mamba-ssm's ops do
    conv, conv_update, lsa_step, scan, state_update, dropout, lsa = (importlib.import_module(f"recbole_mamba.{m}") for m in (
        "ops.causal_conv1d", "ops.causal_conv1d_update", "ops.causal_lsa_step", "ops.selective_scan",
        "ops.selective_state_update", "layers.dropout", "layers.lsa"))

    def boom(*args, **kwargs):
        raise AssertionError("a fused CPU kernel ran under mamba_backend: reference")

    class Boom:
        apply = staticmethod(boom)

    monkeypatch.setattr(conv, "CausalConv1dSiLUCPU", Boom)
    monkeypatch.setattr(conv_update, "_update", boom)
    monkeypatch.setattr(lsa_step, "_lsa_step", boom)
    monkeypatch.setattr(scan, "selective_scan_cpu", boom)
    monkeypatch.setattr(state_update, "selective_state_update_cpu", boom)
    monkeypatch.setattr(dropout, "dropout_cpu", boom)
    monkeypatch.setattr(lsa, "causal_lsa", boom)
    return boom


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda m: m.__name__)
def test_reference_backend_runs_no_custom_kernel_anywhere(model_cls, tiny_dataset, monkeypatch):
    net = _build(model_cls, tiny_dataset, "reference")
    layers = [m for m in net.modules() if isinstance(m, (Mamba, Dropout, LowRankSelfAttention))]
    assert layers and all(m.backend == "reference" for m in layers)
    seq = torch.randint(1, net.n_items, (3, 12))
    lens = torch.tensor([12, 5, 1])
    with torch.no_grad():
        expected = net.train().forward(seq, lens)  # training mode: the dropout path too
    _forbid_kernels(monkeypatch)
    net.train()
    torch.manual_seed(1)
    out = net.forward(seq, lens)
    out.square().sum().backward()
    net.eval()
    with torch.no_grad():
        state = net.init_state(seq, lens)
        net.update_state(state, torch.randint(1, net.n_items, (3,)))
    assert out.shape == expected.shape


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda m: m.__name__)
def test_the_kernel_guard_sees_the_cpu_backend(model_cls, tiny_dataset, monkeypatch):
    """The guard above is not vacuous: with mamba_backend cpu the same calls reach a kernel."""
    net = _build(model_cls, tiny_dataset, "cpu").train()
    _forbid_kernels(monkeypatch)
    with pytest.raises(AssertionError, match="fused CPU kernel ran"):
        net.forward(torch.randint(1, net.n_items, (3, 12)), torch.tensor([12, 5, 1]))
    net.eval()
    with torch.no_grad(), pytest.raises(AssertionError, match="fused CPU kernel ran"):
        net.update_state(net.empty_state(2), torch.randint(1, net.n_items, (2,)))


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda m: m.__name__)
def test_cpu_backend_matches_reference(model_cls, tiny_dataset):
    ref = _build(model_cls, tiny_dataset, "reference").eval()
    cpu = _build(model_cls, tiny_dataset, "cpu").eval()
    cpu.load_state_dict(ref.state_dict())
    seq = torch.randint(1, ref.n_items, (3, 12))
    lens = torch.tensor([12, 5, 1])
    with torch.no_grad():
        torch.testing.assert_close(cpu.forward(seq, lens), ref.forward(seq, lens), atol=1e-5, rtol=1e-4)


def test_set_backend_reaches_every_layer_and_rejects_unknown_names():
    net = torch.nn.Sequential(Mamba(8, 4), Dropout(0.2), LowRankSelfAttention(8, 2, 3))
    assert set_backend(net, "reference") == 5  # Mamba, Dropout, LSA and its two dropouts
    assert all(m.backend == "reference" for m in net.modules() if hasattr(m, "backend"))
    with pytest.raises(ValueError, match="unknown mamba_backend 'cuda'"):
        set_backend(net, "cuda")
    with pytest.raises(ValueError, match="unknown mamba_backend"):
        Dropout(0.1, backend="gpu")
    with pytest.raises(ValueError, match="unknown mamba_backend"):
        Mamba(8, 4, backend="fast")


@pytest.mark.parametrize("backend", ["mamba_ssm", "triton"])
def test_an_impossible_backend_raises_alike_in_every_op(backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = torch.device("cpu")
    with pytest.raises(ValueError) as first:
        resolve_backend(backend, cpu)
    message = str(first.value)
    mamba = Mamba(8, 4, d_conv=3, backend=backend).eval()
    x = torch.randn(2, 5, 8)
    conv, ssm = mamba.allocate_inference_cache(2)
    lsa = LowRankSelfAttention(8, 2, 3, backend=backend)
    calls = {
        "Mamba.forward": lambda: mamba(x),
        "Mamba.step": lambda: mamba.step(x[:, :1], conv, ssm),
        "Dropout (training)": lambda: Dropout(0.3, backend=backend).train()(x),
        "LowRankSelfAttention.forward": lambda: lsa(x, torch.ones(2, 5, dtype=torch.bool)),
        "causal_conv1d_silu": lambda: causal_conv1d_silu(x, torch.randn(8, 3), backend=backend),
        "causal_conv1d_update": lambda: causal_conv1d_update(x[:, 0], conv[:, :8].contiguous(), torch.randn(8, 3),
                                                             backend=backend),
        "runs_cpu_kernels": lambda: runs_cpu_kernels(backend, x),
    }
    for name, call in calls.items():
        with torch.no_grad(), pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message, name


def test_auto_is_cpu_on_cpu_and_every_name_is_known():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert resolve_backend("reference", "cpu") == "reference"
    assert set(BACKENDS) == {"auto", "mamba_ssm", "triton", "cpu", "reference"}
