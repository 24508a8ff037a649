"""Outputs at position t ignore later items and padding; the MoE gate is a real gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recbole.config import Config

from recbole_mamba import MambaRec, MLSA4Rec, MoEMaTrRec
from recbole_mamba.ops import causal_lsa_ref

from conftest import tiny_config


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset


def build(model_cls, dataset, **extra):
    cfg = Config(model=model_cls.__name__, dataset="ml-100k",
                 config_dict=tiny_config(Path(dataset.config["checkpoint_dir"]).parent, **{"MAX_ITEM_LIST_LENGTH": 12, **extra}))
    torch.manual_seed(0)
    return model_cls(cfg, dataset).eval()


CASES = [
    (MambaRec, {}),
    (MambaRec, {"mamba_variant": "attention"}),
    (MoEMaTrRec, {}),
    (MLSA4Rec, {}),  # lsa_causal: True (default)
    (MLSA4Rec, {"hidden_size": 48, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 12}),  # prefix form (L*H > P*D is false here too)
]


@pytest.mark.parametrize("model_cls,extra", CASES)
def test_position_t_ignores_later_items_and_padding(dataset, model_cls, extra):
    net = build(model_cls, dataset, **extra)
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, dataset.item_num, (4, 12), generator=g)
    lens = torch.tensor([12, 9, 5, 1])
    for i, n in enumerate(lens):
        seq[i, n:] = 0
    with torch.no_grad():
        base = net.encode(seq, lens)
        for t in (0, 3, 7):
            changed = seq.clone()
            for i, n in enumerate(lens):
                if t + 1 < n:
                    changed[i, t + 1 : n] = torch.randint(1, dataset.item_num, (int(n) - t - 1,), generator=g)
            out = net.encode(changed, lens)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
        # longer padding (more zeros after the end) changes nothing at real positions
        padded = torch.cat([seq, torch.zeros(4, 0, dtype=seq.dtype)], dim=1)
        torch.testing.assert_close(net.forward(padded, lens), net.forward(seq, lens))


def test_mlsa4rec_chunked_form_equals_the_definition(dataset):
    net = build(MLSA4Rec, dataset)
    lsa = net.interaction.lsa
    x = torch.randn(3, 12, 16)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    q = lsa._heads(lsa.query(x))
    k, v = lsa.key(x), lsa.value(x)
    b = causal_lsa_ref(q.flatten(-2), k, v, lsa.pool_key.logits(k, mask), lsa.pool_value.logits(v, mask),
                       lsa.n_heads, 0.5).view(q.shape)
    for chunk in (1, 5, 12, 64):  # a partial last block, one block, blocks longer than L
        c = lsa._causal_by_chunks(q, lsa.key(x), lsa.value(x), mask, 0.5, chunk)
        torch.testing.assert_close(c[mask], b[mask], atol=1e-5, rtol=1e-5)


def test_authors_non_causal_form_sees_the_future(dataset):
    net = build(MLSA4Rec, dataset, lsa_causal=False, lsa_mask_padding=False, lsa_softmax_over="positions")
    seq = torch.randint(1, dataset.item_num, (2, 12))
    lens = torch.tensor([12, 12])
    changed = seq.clone()
    changed[:, 8:] = torch.randint(1, dataset.item_num, (2, 4))
    with torch.no_grad():
        assert not torch.allclose(net.encode(seq, lens)[:, :3], net.encode(changed, lens)[:, :3])


def test_positions_softmax_requires_non_causal(dataset):
    with pytest.raises(ValueError, match="cannot be causal"):
        build(MLSA4Rec, dataset, lsa_softmax_over="positions")


@pytest.mark.parametrize("causal", [True, False])
def test_moe_gate_in_unit_interval_and_reacts(dataset, causal):
    net = build(MoEMaTrRec, dataset, gate_causal=causal)
    layer = net.layers[0]
    x = torch.randn(3, 12, 16)
    mask = torch.ones(3, 12, dtype=torch.bool)
    g1 = layer.gate_values(x, mask)
    g2 = layer.gate_values(x + 3.0 * torch.randn(3, 12, 16), mask)
    assert ((g1 > 0) & (g1 < 1)).all()
    assert g1.shape == ((3, 12, 1) if causal else (3, 1, 1))
    assert (g1 - g2).abs().max() > 1e-3
    # gradient reaches the gate
    seq = torch.randint(1, dataset.item_num, (2, 12))
    net.train()
    out = net.forward(seq, torch.tensor([12, 6]))
    (out * torch.randn_like(out)).sum().backward()  # plain sum() of a LayerNorm output has no gradient
    assert layer.gate.weight.grad.abs().sum() > 0
