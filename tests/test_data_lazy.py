"""LazySequentialDataset: the same rows as RecBole's augmentation, all-position windows, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import SequentialDataset
from recbole.quick_start import run_recbole

from conftest import tiny_config
from recbole_mamba.data import SEQ_END_FIELD, LazySequentialDataset


def _config(tmp_path, model="MambaRec", **overrides):
    cfg = tiny_config(tmp_path, **overrides)
    return Config(model=model, dataset="ml-100k", config_dict=cfg)


def _rows(dataset) -> dict[str, np.ndarray]:
    """Every row of a (split) dataset with its history window, sorted by (user, target time)."""
    data = dataset[np.arange(len(dataset))] if isinstance(dataset, LazySequentialDataset) \
        else dataset.inter_feat[np.arange(len(dataset))]
    keys = ["user_id", "item_id", "timestamp", "item_length", "item_id_list", "timestamp_list"]
    out = {k: data[k].numpy() for k in keys}
    order = np.lexsort((out["timestamp"], out["item_id"], out["user_id"]))
    return {k: v[order] for k, v in out.items()}


@pytest.mark.parametrize("max_len", [3, 10])
def test_augment_mode_equals_recbole(in_tmp, max_len):
    """Same train/valid/test rows and histories as RecBole's materialised augmentation."""
    config = _config(in_tmp, train_mode="augment", MAX_ITEM_LIST_LENGTH=max_len)
    ours = create_dataset(config)
    assert isinstance(ours, LazySequentialDataset)
    theirs = SequentialDataset(config)
    for mine, ref in zip(ours.build(), theirs.build()):
        a, b = _rows(mine), _rows(ref)
        assert len(a["user_id"]) == len(b["user_id"]) > 0
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _targets_by_user(dataset) -> dict[int, list[int]]:
    """user -> flat indices of the targets a (split) dataset trains on at every position."""
    data = dataset[np.arange(len(dataset))]
    out: dict[int, list[int]] = {}
    for user, end, length in zip(data["user_id"].tolist(), data[SEQ_END_FIELD].tolist(),
                                 data["item_length"].tolist()):
        out.setdefault(user, []).extend(range(end - length + 1, end + 1))
    return out


@pytest.mark.parametrize("max_len", [4, 50])
def test_all_positions_covers_each_train_target_once(in_tmp, max_len):
    aug = _config(in_tmp, train_mode="augment", MAX_ITEM_LIST_LENGTH=max_len)
    allpos = _config(in_tmp, train_mode="all_positions", MAX_ITEM_LIST_LENGTH=max_len)
    train_aug = create_dataset(aug).build()[0]
    ds = create_dataset(allpos)
    train, valid, test = ds.build()
    # every training target of RecBole's augmentation, each once, in windows of <= L
    expected = {}
    for user, end in zip(train_aug.inter_feat["user_id"].tolist(), train_aug.inter_feat[SEQ_END_FIELD].tolist()):
        expected.setdefault(user, []).append(end)
    got = _targets_by_user(train)
    assert {u: sorted(v) for u, v in got.items()} == {u: sorted(v) for u, v in expected.items()}
    assert all(len(v) == len(set(v)) for v in got.values())
    assert int(train.inter_feat["item_length"].max()) <= max_len
    if max_len == 4:
        assert len(train) > len({u for u in expected})  # long users are cut into several windows
    # the window's items are the user's items just before the target, in time order
    batch = train[np.arange(len(train))]
    flat_items = ds._flat["item_id"]
    for row in range(0, len(train), 37):
        end, length = int(batch[SEQ_END_FIELD][row]), int(batch["item_length"][row])
        assert torch.equal(batch["item_id_list"][row, :length], flat_items[end - length:end])
        assert batch["item_id"][row] == flat_items[end]
        assert (batch["item_id_list"][row, length:] == 0).all()
    # validation and test are RecBole's own
    ref_valid, ref_test = create_dataset(aug).build()[1:]
    for mine, ref in ((valid, ref_valid), (test, ref_test)):
        a, b = _rows(mine), _rows(ref)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_last_window_only(in_tmp):
    ds = create_dataset(_config(in_tmp, train_mode="all_positions", train_windows="last", MAX_ITEM_LIST_LENGTH=4))
    train = ds.build()[0]
    users = train.inter_feat["user_id"]
    assert len(torch.unique(users)) == len(users)


def test_memory_does_not_grow_with_max_len(in_tmp):
    """The stored rows are the same size at L=10 and L=2000 (histories are cut per batch)."""
    def stored_bytes(max_len):
        ds = create_dataset(_config(in_tmp, MAX_ITEM_LIST_LENGTH=max_len))
        ds.build()
        return sum(v.element_size() * v.nelement() for v in ds.inter_feat.interaction.values())

    assert stored_bytes(2000) == stored_bytes(10)


def test_bad_train_mode_rejected(in_tmp):
    with pytest.raises(ValueError, match="train_mode must be one of"):
        create_dataset(_config(in_tmp, train_mode="everything"))


@pytest.mark.slow
def test_all_positions_rejects_non_causal_model(in_tmp):
    cfg = tiny_config(in_tmp, train_mode="all_positions", lsa_causal=False)
    with pytest.raises(ValueError, match="needs a causal model: lsa_causal: False"):
        run_recbole(model="MLSA4Rec", dataset="ml-100k", config_dict=cfg)


@pytest.mark.slow
def test_all_positions_loss_counts_every_position(in_tmp):
    """The CE loss in all_positions mode is the mean over every real position of the batch."""
    config = _config(in_tmp, train_mode="all_positions", loss_type="CE", train_neg_sample_args=None,
                     MAX_ITEM_LIST_LENGTH=6)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    from recbole_mamba.models import MambaRec

    torch.manual_seed(0)
    model = MambaRec(config, train_data.dataset).eval()
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    seq, lens, pos = batch["item_id_list"], batch["item_length"], batch["item_id"]
    hidden = model.encode(seq, lens)
    terms = []
    for b in range(len(seq)):
        targets = torch.cat([seq[b, 1:lens[b]], pos[b:b + 1]])
        logits = hidden[b, :lens[b]] @ model.item_embedding.weight.t()
        terms.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    torch.testing.assert_close(loss, torch.cat(terms).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sasrec_baseline_all_positions(in_tmp):
    """RecBole's SASRec trains at every position with train_mode all_positions; its per-position
    encoder output at the last position is exactly its own forward()."""
    cfg = tiny_config(in_tmp, train_mode="all_positions", train_neg_sample_args=None, loss_type="CE")
    result = run_recbole(model="SASRec", dataset="ml-100k", config_dict=cfg)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0

    from recbole.model.sequential_recommender import SASRec

    from recbole_mamba.baselines import _all_positions_encode

    config = _config(in_tmp, model="SASRec", train_mode="all_positions", train_neg_sample_args=None)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = SASRec(config, train_data.dataset).eval()
    batch = next(iter(train_data))
    seq, lens = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        every = _all_positions_encode(model)(seq, lens)
        last = model.forward(seq, lens)
    assert every.shape == seq.shape + (config["hidden_size"],)
    torch.testing.assert_close(every[torch.arange(len(seq)), lens - 1], last)
    assert "gather_indexes" not in vars(model)  # the instance patch is removed again


@pytest.mark.parametrize("name", ["LightSANs", "NARM", "STAMP", "Caser", "FPMC", "SINE", "CORE"])
def test_non_causal_baseline_rejects_all_positions(in_tmp, name):
    """Every RecBole sequential model but SASRec and GRU4Rec refuses all-position training."""
    import recbole.model.sequential_recommender as seq

    config = _config(in_tmp, model=name, train_mode="all_positions", train_neg_sample_args=None)
    dataset = create_dataset(config)
    with pytest.raises(ValueError, match=f"{name} does not support train_mode: all_positions"):
        getattr(seq, name)(config, dataset)


def _train_steps(config) -> tuple[int, int]:
    """(optimizer steps per epoch, training targets) of the training dataloader RecBole builds."""
    train, _, _ = data_preparation(config, create_dataset(config))
    ds = train._dataset
    targets = int(ds.inter_feat["item_length"].sum()) if ds.targets_per_row else len(ds)
    return len(train), targets


@pytest.mark.slow
def test_train_batch_size_counts_targets_in_both_modes_ml100k(in_tmp):
    """An all-position epoch makes as many optimizer steps as an augmented one (within 5%); with
    train_batch_unit: sequences a batch is that many windows (a handful of steps)."""
    common = dict(user_inter_num_interval=None, MAX_ITEM_LIST_LENGTH=50, train_batch_size=512,
                  loss_type="CE", train_neg_sample_args=None)
    aug_steps, aug_targets = _train_steps(_config(in_tmp, train_mode="augment", **common))
    all_steps, all_targets = _train_steps(_config(in_tmp, train_mode="all_positions", **common))
    assert aug_targets == all_targets == 97_171  # ml-100k: every interaction but 3 per user
    assert aug_steps == -(-97_171 // 512)
    assert abs(all_steps - aug_steps) <= 0.05 * aug_steps
    seq_steps, _ = _train_steps(_config(in_tmp, train_mode="all_positions", train_batch_unit="sequences", **common))
    assert seq_steps == -(-2412 // 512) == 5
    with pytest.raises(ValueError, match="train_batch_unit must be one of"):
        create_dataset(_config(in_tmp, train_batch_unit="rows", **common))


@pytest.mark.slow
def test_train_batch_size_counts_targets_in_both_modes_ml1m(in_tmp):
    """The same rule on long histories (ML-1M ratings half, ~163 per user, L=200)."""
    from conftest import shared_data_dir
    from dataset_prep.movielens import convert

    data = shared_data_dir()
    ratings = data / "ml-1m" / "ratings.users_1-2999.dat" if data else None
    if ratings is None or not ratings.is_file():
        pytest.skip("../shared/data/ml-1m not present")
    convert(ratings, in_tmp / "dataset" / "ml1h", progress=False)
    common = dict(data_path=str(in_tmp / "dataset"), MAX_ITEM_LIST_LENGTH=200, train_batch_size=2048,
                  loss_type="CE", train_neg_sample_args=None, user_inter_num_interval=None,
                  load_col={"inter": ["user_id", "item_id", "timestamp"]},
                  eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"})
    steps = {}
    for mode in ("augment", "all_positions"):
        cfg = Config(model="MambaRec", dataset="ml1h", config_dict=tiny_config(in_tmp, train_mode=mode, **common))
        steps[mode] = _train_steps(cfg)
    (aug_steps, aug_targets), (all_steps, all_targets) = steps["augment"], steps["all_positions"]
    assert aug_targets == all_targets == 487_650 - 3 * 2_999
    assert aug_steps == -(-aug_targets // 2048)
    assert abs(all_steps - aug_steps) <= 0.05 * aug_steps


def test_training_target_counts_agree_in_both_modes(in_tmp):
    """Popularity sampling reads the same item counts whichever mode built the training split."""
    from recbole_mamba.models.losses import train_target_counts

    aug = create_dataset(_config(in_tmp, train_mode="augment", MAX_ITEM_LIST_LENGTH=4)).build()[0]
    allpos = create_dataset(_config(in_tmp, train_mode="all_positions", MAX_ITEM_LIST_LENGTH=4)).build()[0]
    a, b = train_target_counts(aug), train_target_counts(allpos)
    assert a.sum() == len(aug) and a.shape == (aug.item_num,)
    np.testing.assert_array_equal(a, b)
