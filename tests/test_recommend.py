"""The recommend CLI on a model trained one epoch on ml-100k: original tokens, history exclusion,
events applied through the online state (equal to a full recompute), unknown ids."""

from __future__ import annotations

import csv
import glob

import numpy as np
import pytest
import torch
from recbole.quick_start import run_recbole

from recbole_mamba import recommend

from conftest import tiny_config

pytestmark = pytest.mark.slow

L = 80  # longer than every kept user's history (20..60) plus the events, so no window cuts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("recommend")
    os.chdir(root)
    cfg = tiny_config(root, MAX_ITEM_LIST_LENGTH=L, mamba_variant="attention")
    run_recbole(model="MambaRec", dataset="ml-100k", config_dict=cfg)
    (ckpt,) = glob.glob(str(root / "saved" / "MambaRec-*.pth"))
    _, model, dataset = recommend.load_model(ckpt)
    return root, ckpt, model, dataset


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def some_users(dataset, n=3):
    return [str(t) for t in dataset.field2id_token[dataset.uid_field][1 : n + 1]]


def original_history(dataset, user_token):
    uid = dataset.token2id(dataset.uid_field, user_token)
    inter = dataset.inter_feat
    items = np.asarray(inter[dataset.iid_field])[np.asarray(inter[dataset.uid_field]) == uid]
    return set(dataset.id2token(dataset.iid_field, items).tolist())


def test_top_k_in_original_tokens_and_history_excluded(trained, tmp_path):
    _, ckpt, model, dataset = trained
    users = some_users(dataset)
    out = tmp_path / "recs.csv"
    assert recommend.main(["--checkpoint", ckpt, "--users", ",".join(users), "--topk", "5",
                           "--exclude-history", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [r["user_id"] for r in rows] == [u for u in users for _ in range(5)]
    assert {r["rank"] for r in rows} == {"1", "2", "3", "4", "5"}
    item_tokens = set(dataset.field2id_token[dataset.iid_field][1:].tolist())
    for user in users:
        recs = [r["item_id"] for r in rows if r["user_id"] == user]
        assert set(recs) <= item_tokens and "[PAD]" not in recs
        assert not set(recs) & original_history(dataset, user)
        scores = [float(r["score"]) for r in rows if r["user_id"] == user]
        assert scores == sorted(scores, reverse=True)
    assert not list(tmp_path.glob(".recs.csv.*"))  # no temporary file left behind


def test_topk_above_the_unseen_items_lists_only_unseen_items(trained, tmp_path):
    """--topk larger than the catalogue with --exclude-history: every unseen item once, no seen
    item, no [PAD], no -inf score."""
    _, ckpt, model, dataset = trained
    (user,) = some_users(dataset, 1)
    out = tmp_path / "all.csv"
    assert recommend.main(["--checkpoint", ckpt, "--users", user, "--topk", str(dataset.item_num + 50),
                           "--exclude-history", "--out", str(out)]) == 0
    recs = [r["item_id"] for r in read_csv(out)]
    item_tokens = set(dataset.field2id_token[dataset.iid_field][1:].tolist())
    assert set(recs) == item_tokens - original_history(dataset, user)
    assert len(recs) == len(set(recs))
    assert all(float(r["score"]) > float("-inf") for r in read_csv(out))


def test_without_exclusion_matches_recboles_full_sort(trained):
    _, _, model, dataset = trained
    rec = recommend.Recommender(model, dataset)
    uid = rec.user_id(some_users(dataset, 1)[0])
    history = rec._history[uid]
    seq = torch.zeros(1, L, dtype=torch.long)
    seq[0, : len(history)] = torch.as_tensor(history[-L:])
    with torch.no_grad():
        expected = model.forward(seq, torch.tensor([len(history)])) @ model.item_embedding.weight.t()
    got = rec.scores([uid])
    torch.testing.assert_close(got[0, 1:], expected[0, 1:], atol=1e-4, rtol=0)


def test_events_update_state_exactly_like_a_recompute(trained, tmp_path):
    _, ckpt, model, dataset = trained
    users = some_users(dataset, 2)
    items = [str(t) for t in dataset.field2id_token[dataset.iid_field][10:14]]
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n"
                      f"{users[0]},{items[0]},1\n{users[1]},{items[1]},2\n{users[0]},{items[2]},3\n")
    out = tmp_path / "after.csv"
    assert recommend.main(["--checkpoint", ckpt, "--events", str(events), "--topk", "10",
                           "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [(r["user_id"], r["step"], r["event_item_id"]) for r in rows[::10]] == [
        (users[0], "1", items[0]), (users[1], "1", items[1]), (users[0], "2", items[2])]
    # the same events through a full recompute per event (the fallback path)
    rec = recommend.Recommender(model, dataset)
    rec.streaming = False
    u0 = rec.user_id(users[0])
    rec.add_event(u0, rec.item_id(items[0]))
    rec.add_event(u0, rec.item_id(items[2]))
    recomputed = rec.scores([u0])[0]
    streamed = [float(r["score"]) for r in rows[20:30]]
    top = recomputed.topk(10)
    torch.testing.assert_close(torch.tensor(streamed), top.values, atol=1e-4, rtol=1e-5)
    assert [r["item_id"] for r in rows[20:30]] == \
        dataset.id2token(dataset.iid_field, top.indices.numpy()).tolist()


def test_unknown_ids_error_or_skip_with_count(trained, tmp_path, capsys):
    _, ckpt, _, dataset = trained
    user = some_users(dataset, 1)[0]
    assert recommend.main(["--checkpoint", ckpt, "--users", f"{user},no-such-user"]) == 2
    assert "unknown user 'no-such-user'" in capsys.readouterr().err
    events = tmp_path / "events.csv"
    events.write_text(f"{user},no-such-item\nghost,1\n{user},{dataset.field2id_token[dataset.iid_field][5]}\n")
    assert recommend.main(["--checkpoint", ckpt, "--events", str(events)]) == 2
    assert f"{events}:1: unknown item 'no-such-item'" in capsys.readouterr().err
    out = tmp_path / "skip.csv"
    assert recommend.main(["--checkpoint", ckpt, "--events", str(events), "--on-unknown", "skip",
                           "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 unknown user(s) skipped (ghost)" in err and "1 event(s) with an unknown item skipped" in err
    assert {r["user_id"] for r in read_csv(out)} == {user}


def test_malformed_events_and_missing_checkpoint(trained, tmp_path, capsys):
    _, ckpt, _, dataset = trained
    user = some_users(dataset, 1)[0]
    events = tmp_path / "bad.csv"
    events.write_text(f"{user},5\n{user}\n")
    out = tmp_path / "never.csv"
    assert recommend.main(["--checkpoint", ckpt, "--events", str(events), "--out", str(out)]) == 2
    assert f"{events}:2: expected user_id,item_id[,timestamp], got 1 fields" in capsys.readouterr().err
    assert not out.exists()
    assert recommend.main(["--checkpoint", str(tmp_path / "none.pth"), "--users", user]) == 2
    assert "does not exist" in capsys.readouterr().err
