"""Online state: streaming events one by one gives the full forward's scores at every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recbole.config import Config

from recbole_mamba import MambaRec, MLSA4Rec, MoEMaTrRec
from recbole_mamba.layers import Mamba

from conftest import tiny_config

L = 12


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset


def build(model_cls, dataset, **extra):
    cfg = Config(model=model_cls.__name__, dataset="ml-100k",
                 config_dict=tiny_config(Path(dataset.config["checkpoint_dir"]).parent,
                                         **{"MAX_ITEM_LIST_LENGTH": L, **extra}))
    torch.manual_seed(0)
    net = model_cls(cfg, dataset)
    # move the Mamba time steps and gates off their init so every path carries signal
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


CASES = [
    pytest.param(MambaRec, {}, id="MambaRec-block"),
    pytest.param(MambaRec, {"mamba_variant": "attention", "num_layers": 2}, id="MambaRec-attention"),
    pytest.param(MambaRec, {"block_residual": True}, id="MambaRec-block-residual"),
    pytest.param(MoEMaTrRec, {"num_layers": 2}, id="MoEMaTrRec"),
    pytest.param(MLSA4Rec, {}, id="MLSA4Rec"),
    pytest.param(MLSA4Rec, {"hidden_size": 48, "n_heads": 1, "init_style": "authors"}, id="MLSA4Rec-authors-init"),
]


def random_histories(n_items: int, lengths: list[int], seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (len(lengths), L), generator=g)
    lens = torch.tensor(lengths)
    for i, n in enumerate(lengths):
        seq[i, n:] = 0
    return seq, lens


def full_scores(net, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.forward(seq, lens) @ net.item_embedding.weight.t()


def assert_same_ranking(a: torch.Tensor, b: torch.Tensor, k: int = 10, tie: float = 1e-5) -> None:
    """Top-k of a equals top-k of b, except for items whose scores tie within ``tie``."""
    top_a = a.topk(k, dim=-1)
    for row in range(a.shape[0]):
        kth = top_a.values[row, -1]
        sure_a = set(top_a.indices[row][top_a.values[row] > kth + tie].tolist())
        sure_b = set(b[row].topk(k).indices.tolist())
        assert sure_a <= sure_b, f"row {row}: top-{k} differs"


@pytest.mark.parametrize("model_cls,extra", CASES)
def test_streaming_from_empty_matches_full_forward_at_every_step(dataset, model_cls, extra):
    net = build(model_cls, dataset, **extra)
    seq, lens = random_histories(dataset.item_num, [L, 9, 5, 1, L])
    state = net.empty_state(seq.shape[0])
    for t in range(L):
        active = (lens > t).nonzero().squeeze(-1)
        # rows whose history already ended get no more events: stream them apart
        sub = state.select(active)
        net.update_state(sub, seq[active, t])
        for j, row in enumerate(active.tolist()):
            state.count[row] = sub.count[j]
            state.hidden[row] = sub.hidden[j]
        state = merge(state, sub, active)
        prefix = seq[active].clone()
        prefix[:, t + 1:] = 0
        expected = full_scores(net, prefix, torch.full((len(active),), t + 1))
        got = net.score_state(state.select(active))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert_same_ranking(got, expected)
        assert_same_ranking(expected, got)


def merge(state, sub, rows):
    """Write the users of ``sub`` back into ``state`` at ``rows`` (caches may have grown)."""
    for name, value in sub.tensors.items():
        old = state.tensors[name]
        if old.shape[1:] != value.shape[1:]:  # a key/value cache that grew
            grown = old.new_zeros(old.shape[0], *value.shape[1:])
            grown[:, : old.shape[1]] = old
            old = grown
        old[rows] = value
        state.tensors[name] = old
    state.count[rows] = sub.count
    state.hidden[rows] = sub.hidden
    return state


@pytest.mark.parametrize("model_cls,extra", CASES)
def test_prefix_initialised_state_continues_exactly(dataset, model_cls, extra):
    """init_state on padded, variable-length prefixes, then one event at a time to the end."""
    net = build(model_cls, dataset, **extra)
    seq, lens = random_histories(dataset.item_num, [L] * 4, seed=11)
    start = torch.tensor([1, 3, 6, L - 1])
    prefix = seq.clone()
    for i, n in enumerate(start.tolist()):
        prefix[i, n:] = 0
    state = net.init_state(prefix, start)
    torch.testing.assert_close(net.score_state(state), full_scores(net, prefix, start), atol=1e-4, rtol=0)
    for step in range(L - 1):
        pos = start + step
        live = (pos < L).nonzero().squeeze(-1)
        if len(live) == 0:
            break
        sub = net.update_state(state.select(live), seq[live, pos[live]])
        state = merge(state, sub, live)
        upto = seq[live].clone()
        for j, n in enumerate((pos[live] + 1).tolist()):
            upto[j, n:] = 0
        torch.testing.assert_close(net.score_state(sub), full_scores(net, upto, pos[live] + 1),
                                   atol=1e-4, rtol=0)


def test_state_size_and_clone(dataset):
    net = build(MambaRec, dataset)
    seq, lens = random_histories(dataset.item_num, [L, 4])
    state = net.init_state(seq, lens)
    copy = state.clone()
    net.update_state(state, torch.tensor([3, 4]))
    assert torch.equal(copy.count, lens) and torch.equal(state.count, lens + 1)
    mixer = net.layers[0].mamba
    expected = 4 * mixer.d_inner * (mixer.d_conv + mixer.d_state) + 4 * net.hidden_size + 8
    assert state.nbytes_per_user() == expected


def test_moe_cache_grows_and_stays_exact_past_capacity(dataset):
    net = build(MoEMaTrRec, dataset)
    seq, lens = random_histories(dataset.item_num, [L, L])
    state = net.empty_state(2)
    assert state.tensors["0.keys"].shape[1] == 1
    for t in range(L):
        net.update_state(state, seq[:, t])
    assert state.tensors["0.keys"].shape[1] >= L
    torch.testing.assert_close(net.score_state(state), full_scores(net, seq, lens), atol=1e-4, rtol=0)


def test_mambarec_past_max_length_reuses_last_position(dataset):
    net = build(MambaRec, dataset)
    seq, lens = random_histories(dataset.item_num, [L])
    state = net.init_state(seq, lens)
    net.update_state(state, torch.tensor([7]))  # position L: no learned embedding
    assert int(state.count) == L + 1
    assert torch.isfinite(net.score_state(state)).all()


def test_bad_uses_are_rejected(dataset):
    net = build(MambaRec, dataset)
    seq, lens = random_histories(dataset.item_num, [4])
    state = net.init_state(seq, lens)
    with pytest.raises(ValueError, match="internal ids"):
        net.update_state(state, torch.tensor([dataset.item_num]))
    with pytest.raises(ValueError, match="item ids for a state of 1 users"):
        net.update_state(state, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="no events yet"):
        net.score_state(net.empty_state(1))
    net.train()
    with pytest.raises(RuntimeError, match="model.eval"):
        net.init_state(seq, lens)
    authors = build(MLSA4Rec, dataset, lsa_causal=False, lsa_softmax_over="positions")
    with pytest.raises(ValueError, match="cannot be updated event by event"):
        authors.init_state(seq, lens)
    seed_gate = build(MoEMaTrRec, dataset, gate_causal=False)
    with pytest.raises(ValueError, match="gate_causal"):
        seed_gate.empty_state(1)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mamba_forward_with_state_matches_step(backend):
    torch.manual_seed(1)
    m = Mamba(d_model=8, d_state=4, d_conv=3, expand=2, backend=backend).eval()
    x = torch.randn(3, 7, 8)
    lengths = torch.tensor([7, 4, 0])
    with torch.no_grad():
        full = m(x)
        out, conv_state, ssm_state = m.forward_with_state(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out[b, :n], full[b, :n], atol=1e-5, rtol=1e-5)
            # step from zero states over the first n positions gives the same states
            conv, ssm = m.allocate_inference_cache(1, 7)
            for t in range(n):
                m.step(x[b : b + 1, t : t + 1], conv, ssm)
            torch.testing.assert_close(conv_state[b : b + 1], conv, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(ssm_state[b : b + 1], ssm, atol=1e-5, rtol=1e-5)
        # and the next step continues the sequence
        nxt = torch.randn(3, 1, 8)
        stepped = m.step(nxt, conv_state.clone(), ssm_state.clone())[0]
        ref = m(torch.cat([x[:1], nxt[:1]], dim=1))[:, -1]
        torch.testing.assert_close(stepped[0, 0], ref[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        m.forward_with_state(x, torch.tensor([8, 1, 1]))
