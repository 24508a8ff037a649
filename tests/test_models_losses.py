"""The five training losses (recbole_mamba.models.losses) against plain definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.model.loss import BPRLoss

from recbole_mamba.models.losses import RecLoss, SharedNegativeSampler, uniform_negatives_except

N_ITEMS = 40  # ids 0 (padding) .. 39


def _inputs(p=12, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(p, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(N_ITEMS, d, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(1, N_ITEMS, (p,), generator=g)
    return hidden, weight, targets


def _ss_reference(hidden, weight, targets, negatives, log_q=None):
    """Sampled softmax position by position, literally: classes = target + negatives != target."""
    terms = []
    for h, t in zip(hidden, targets):
        scores = [h @ weight[t]]
        for n in negatives:
            if int(n) != int(t):
                s = h @ weight[n]
                if log_q is not None:
                    s = s - (log_q[n] + math.log(len(negatives)))
                scores.append(s)
        scores = torch.stack(scores)
        terms.append(torch.logsumexp(scores, 0) - scores[0])
    return torch.stack(terms).mean()


def test_ss_with_every_other_item_equals_full_ce():
    hidden, weight, targets = _inputs()
    every = torch.arange(1, N_ITEMS)
    for logq in (False, True):
        loss = RecLoss("SS", N_ITEMS, {"ss_logq": logq})
        ss = loss.shared_negative_loss(hidden, targets, weight, every)
        ce = F.cross_entropy(hidden @ weight[1:].t(), targets - 1)  # softmax over real items
        torch.testing.assert_close(ss, ce)


@pytest.mark.parametrize("logq", [False, True])
def test_ss_value_and_gradients_match_plain_form(logq):
    hidden, weight, targets = _inputs()
    loss = RecLoss("SS", N_ITEMS, {"n_negatives": 16, "ss_sampling": "popularity", "ss_logq": logq},
                   item_counts=np.arange(N_ITEMS) % 7)
    torch.manual_seed(3)
    negatives = loss.sampler.sample(targets)
    negatives[:3] = targets[:3]  # some negatives equal some positions' targets
    ours = loss.shared_negative_loss(hidden, targets, weight, negatives)
    ref = _ss_reference(hidden, weight, targets, negatives,
                        loss.sampler.log_q.double() if logq else None)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, (hidden, weight))
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_ss_gradcheck():
    hidden, weight, targets = _inputs(p=5, d=3)
    loss = RecLoss("SS", N_ITEMS, {"n_negatives": 6})
    negatives = torch.tensor([1, 5, 5, 9, int(targets[0]), 30])
    assert torch.autograd.gradcheck(lambda h, w: loss.shared_negative_loss(h, targets, w, negatives),
                                    (hidden, weight))


def test_target_is_never_its_own_negative():
    hidden, weight, targets = _inputs(p=4)
    targets[:] = 7
    negatives = torch.full((10,), 7)
    for kind in ("SS", "gBCE"):
        loss = RecLoss(kind, N_ITEMS, {"n_negatives": 10})
        value = loss.shared_negative_loss(hidden, targets, weight, negatives)
        pos = (hidden * weight[targets]).sum(-1)
        if kind == "SS":  # only the positive class is left: loss 0
            torch.testing.assert_close(value, torch.zeros((), dtype=value.dtype))
        else:
            alpha = 10 / (N_ITEMS - 1)
            beta = alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
            torch.testing.assert_close(value, (-beta * F.logsigmoid(pos) / 11).mean())
    # uniform per-position negatives never hit the target either
    t = torch.randint(1, N_ITEMS, (5000,))
    neg = uniform_negatives_except(t, N_ITEMS)
    assert not bool((neg == t).any()) and int(neg.min()) >= 1 and int(neg.max()) < N_ITEMS


def test_logq_makes_popularity_sampled_softmax_estimate_full_softmax():
    """With popularity negatives, only the logQ-corrected loss approximates the full softmax."""
    hidden, weight, targets = _inputs(p=8, d=4, seed=1)
    counts = (np.arange(N_ITEMS) ** 2) % 31 + 1
    full = F.cross_entropy(hidden @ weight[1:].t(), targets - 1).item()
    torch.manual_seed(0)
    est = {}
    for logq in (False, True):
        loss = RecLoss("SS", N_ITEMS, {"n_negatives": 20000, "ss_sampling": "popularity",
                                       "ss_logq": logq}, item_counts=counts)
        est[logq] = loss(hidden.detach(), targets, weight.detach()).item()
    assert abs(est[True] - full) < 0.02 * full
    assert abs(est[False] - full) > 5 * abs(est[True] - full)


def test_gbce_matches_gsasrec_formula():
    """gSASRec's own computation (positive logit transformed in float64, then BCE over 1+K)."""
    hidden, weight, targets = _inputs()
    loss = RecLoss("gBCE", N_ITEMS, {"n_negatives": 9, "gbce_t": 0.5})
    negatives = torch.randint(1, N_ITEMS, (9,))
    negatives[negatives.unsqueeze(0).eq(targets.unsqueeze(1)).any(0)] = 0  # keep them apart
    negatives = negatives[negatives > 0]
    ours = loss.shared_negative_loss(hidden, targets, weight, negatives)
    k = negatives.numel()
    alpha = k / (N_ITEMS - 1)
    beta = alpha * ((1 - 1 / alpha) * 0.5 + 1 / alpha)
    pos_logit = (hidden * weight[targets]).sum(-1, keepdim=True)
    neg_logits = hidden @ weight[negatives].t()
    eps = 1e-10
    p = torch.clamp(torch.sigmoid(pos_logit), eps, 1 - eps)
    adjusted = torch.clamp(p.pow(-beta), 1 + eps, torch.finfo(torch.float64).max)
    transformed = torch.clamp(1.0 / (adjusted - 1), eps, torch.finfo(torch.float64).max).log()
    logits = torch.cat([transformed, neg_logits], -1)
    gt = torch.zeros_like(logits)
    gt[:, 0] = 1
    ref = F.binary_cross_entropy_with_logits(logits, gt)
    torch.testing.assert_close(ours, ref)
    g1 = torch.autograd.grad(ours, hidden)[0]
    g2 = torch.autograd.grad(ref, hidden)[0]
    torch.testing.assert_close(g1, g2)


def test_gbce_t_zero_is_bce_over_shared_negatives():
    hidden, weight, targets = _inputs()
    negatives = torch.tensor([1, 2, 3])
    targets = torch.randint(4, N_ITEMS, targets.shape)
    ours = RecLoss("gBCE", N_ITEMS, {"gbce_t": 0.0}).shared_negative_loss(hidden, targets, weight, negatives)
    pos = (hidden * weight[targets]).sum(-1, keepdim=True)
    logits = torch.cat([pos, hidden @ weight[negatives].t()], 1)
    gt = torch.zeros_like(logits)
    gt[:, 0] = 1
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, gt))


def test_ce_bpr_bce_unchanged():
    hidden, weight, targets = _inputs()
    neg = uniform_negatives_except(targets, N_ITEMS)
    torch.testing.assert_close(RecLoss("CE", N_ITEMS)(hidden, targets, weight),
                               torch.nn.CrossEntropyLoss()(hidden @ weight.t(), targets))
    pos_s, neg_s = (hidden * weight[targets]).sum(-1), (hidden * weight[neg]).sum(-1)
    torch.testing.assert_close(RecLoss("BPR", N_ITEMS)(hidden, targets, weight, neg), BPRLoss()(pos_s, neg_s))
    bce = torch.nn.BCEWithLogitsLoss()
    torch.testing.assert_close(RecLoss("BCE", N_ITEMS)(hidden, targets, weight, neg),
                               bce(pos_s, torch.ones_like(pos_s)) + bce(neg_s, torch.zeros_like(neg_s)))


def test_sampler_draws_shapes_shares_and_never_padding():
    counts = np.zeros(N_ITEMS)
    counts[5] = 1000
    s = SharedNegativeSampler(N_ITEMS, 200, "popularity", in_batch=0.25, item_counts=counts)
    targets = torch.full((64,), 11)
    torch.manual_seed(0)
    neg = s.sample(targets)
    assert neg.shape == (200,) and int(neg.min()) >= 1 and int(neg.max()) < N_ITEMS
    assert bool((neg[150:] == 11).all())            # the in-batch share comes from the targets
    assert (neg[:150] == 5).float().mean() > 0.8    # popularity: item 5 holds ~1000/1039 of the mass
    u = SharedNegativeSampler(N_ITEMS, 100000).sample(targets)
    freq = torch.bincount(u, minlength=N_ITEMS)[1:].double() / 100000
    assert int(torch.bincount(u, minlength=N_ITEMS)[0]) == 0
    assert float((freq - 1 / (N_ITEMS - 1)).abs().max()) < 0.005


@pytest.mark.parametrize("config, match", [
    ({"n_negatives": 0}, "n_negatives must be a positive integer"),
    ({"ss_sampling": "zipf"}, "ss_sampling must be one of"),
    ({"ss_in_batch": 1.5}, r"ss_in_batch must be a share in \[0, 1\]"),
    ({"gbce_t": 2}, r"gbce_t must be in \[0, 1\]"),
])
def test_bad_loss_options_rejected(config, match):
    with pytest.raises(ValueError, match=match):
        RecLoss("SS" if "gbce_t" not in config else "gBCE", N_ITEMS, config)


def test_unknown_loss_type_names_the_choices():
    with pytest.raises(ValueError, match=r"MambaRec: loss_type must be one of CE, BPR, BCE, SS, gBCE, got 'XYZ'"):
        RecLoss("XYZ", N_ITEMS, owner="MambaRec")


# ----------------------------------------------------------------------------- train_exclude_seen
def test_seen_pairs_are_causal():
    """Position t of a window has seen items 0..t of it, never a later one; padding is skipped."""
    from recbole_mamba.models.losses import seen_pairs

    seq = torch.tensor([[3, 5, 7, 0], [2, 8, 9, 4]])
    positions = torch.full_like(seq, -1)
    positions[seq > 0] = torch.arange(7)
    rows, items = seen_pairs(seq, positions)
    got = {(int(r), int(i)) for r, i in zip(rows, items)}
    want = {(0, 3), (1, 3), (1, 5), (2, 3), (2, 5), (2, 7),
            (3, 2), (4, 2), (4, 8), (5, 2), (5, 8), (5, 9), (6, 2), (6, 8), (6, 9), (6, 4)}
    assert got == want


def _seen_inputs():
    hidden, weight, targets = _inputs()
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, len(targets), (30,), generator=g)
    items = torch.randint(1, N_ITEMS, (30,), generator=g)
    items[0] = targets[rows[0]]  # a seen item equal to the position's target stays its class
    return hidden, weight, targets, (rows, items)


def test_ce_without_seen_items_equals_masked_softmax():
    hidden, weight, targets, (rows, items) = _seen_inputs()
    loss = RecLoss("CE", N_ITEMS, {"train_exclude_seen": True})(hidden, targets, weight, seen=(rows, items))
    logits = (hidden @ weight.t()).detach().clone()
    for r, i in zip(rows.tolist(), items.tolist()):
        if i != int(targets[r]):
            logits[r, i] = -math.inf
    want = F.cross_entropy(logits, targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), want, rtol=0, atol=1e-12)


def test_ss_without_seen_items_equals_plain_form():
    hidden, weight, targets, (rows, items) = _seen_inputs()
    loss = RecLoss("SS", N_ITEMS, {"n_negatives": 16, "train_exclude_seen": True})
    negatives = loss.sampler.sample(targets)
    got = loss.shared_negative_loss(hidden, targets, weight, negatives, (rows, items))
    terms = []
    for p, (h, t) in enumerate(zip(hidden, targets)):
        excluded = {int(i) for r, i in zip(rows, items) if int(r) == p and int(i) != int(t)}
        scores = [h @ weight[t]] + [h @ weight[n] for n in negatives if int(n) != int(t) and int(n) not in excluded]
        scores = torch.stack(scores)
        terms.append(torch.logsumexp(scores, 0) - scores[0])
    torch.testing.assert_close(got, torch.stack(terms).mean(), rtol=0, atol=1e-12)


def test_exclude_seen_refuses_pairwise_losses():
    with pytest.raises(ValueError, match="train_exclude_seen applies to loss_type CE, SS and gBCE, not BPR"):
        RecLoss("BPR", N_ITEMS, {"train_exclude_seen": True}, owner="MambaRec")


@pytest.mark.parametrize("train_mode", ["all_positions", "augment"])
def test_model_loss_leaves_out_what_each_position_has_seen(in_tmp, train_mode):
    """MambaRec's loss with train_exclude_seen equals CE over each position's unseen items,
    computed by hand from the model's own outputs."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from conftest import tiny_config
    from recbole_mamba.models.all_positions import all_positions_targets

    cfg = tiny_config(in_tmp, train_mode=train_mode, train_exclude_seen=True, dropout_prob=0.0)
    config = Config(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("MambaRec")(config, train._dataset).eval()
    batch = next(iter(train))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        got = model.calculate_loss(batch)
        weight = model.item_embedding.weight
        if train_mode == "all_positions":
            hidden = model.encode(seq, lengths)
            targets, real = all_positions_targets(seq, lengths, batch[model.POS_ITEM_ID])
            points = [(b, t) for b in range(len(seq)) for t in range(seq.shape[1]) if real[b, t]]
        else:
            hidden = model.forward(seq, lengths).unsqueeze(1)
            targets = batch[model.POS_ITEM_ID].unsqueeze(1)
            points = [(b, 0) for b in range(len(seq))]
        terms = []
        for b, t in points:
            last = t if train_mode == "all_positions" else int(lengths[b]) - 1
            logits = hidden[b, t] @ weight.t()
            for i in seq[b, :last + 1].tolist():
                if i != int(targets[b, t]):
                    logits[i] = -math.inf
            terms.append(torch.logsumexp(logits, 0) - logits[targets[b, t]])
        want = torch.stack(terms).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    config["train_exclude_seen"] = False
    plain = get_model("MambaRec")(config, train._dataset).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert plain.calculate_loss(batch) > got  # seen items were competing classes before
