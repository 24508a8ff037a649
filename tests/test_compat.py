"""Each compat fix, with a test that fails without it."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from recbole_mamba import compat


def test_numpy2_aliases_let_recbole_config_build(in_tmp):
    from recbole.config import Config

    for alias in ("float_", "complex_", "unicode_"):
        assert hasattr(np, alias)
    cfg = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
    assert cfg["model"] == "SASRec"


def test_pandas_fill_nan_leaves_no_nan(in_tmp, tmp_path):
    """A token field, a float field and a token_seq field with missing cells."""
    from recbole.config import Config
    from recbole.data import create_dataset

    data = tmp_path / "data" / "nanset"
    data.mkdir(parents=True)
    (data / "nanset.inter").write_text(
        "user_id:token\titem_id:token\tscore:float\ttag:token\n"
        + "".join(f"u{u}\ti{(u * 7 + k) % 13}\t{'' if k == 2 else k * 0.5}\t{'' if k == 3 else 't'}\n"
                  for u in range(6) for k in range(6))
    )
    (data / "nanset.item").write_text(
        "item_id:token\tgenre:token_seq\n" + "".join(f"i{i}\t{'' if i % 4 == 0 else 'a b'}\n" for i in range(13))
    )
    cfg = Config(model="BPR", dataset="nanset", config_dict={
        "data_path": str(tmp_path / "data"), "load_col": None, "checkpoint_dir": str(tmp_path),
    })
    ds = create_dataset(cfg)
    ds._change_feat_format()  # DataFrames -> Interaction tensors, as data_preparation does
    inter = ds.inter_feat
    assert not torch.isnan(inter["score"]).any()
    mean = np.mean([k * 0.5 for k in range(6) if k != 2])
    assert torch.isclose(inter["score"][2], torch.tensor(mean, dtype=inter["score"].dtype))
    assert (inter["tag"] >= 0).all()
    genre = ds.item_feat["genre"]  # token_seq: padded (n_items, max_len) ids, per-row lengths kept
    assert genre.shape[0] == ds.item_num
    ids = {ds.id2token("genre", int(g)) for g in genre.flatten() if g > 0}
    assert ids == {"a", "b"}
    n_genres = (genre > 0).sum(1)
    item_tokens = ds.id2token(ds.iid_field, torch.arange(1, ds.item_num))
    for tok, n in zip(item_tokens, n_genres[1:]):
        assert int(n) == (0 if int(tok[1:]) % 4 == 0 else 2), tok


def test_restricted_loader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"config": Evil()}, path, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing global .posix.system"):
        compat.load_recbole_checkpoint(path)


def test_torch_load_itself_is_untouched(tmp_path):
    """No global weights_only=False: plain torch.load still refuses arbitrary globals."""
    path = tmp_path / "x.pth"
    torch.save({"d": io.BytesIO}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_objective_function_tune_report_outside_a_trial():
    import recbole.quick_start.quick_start as qs

    qs.tune.report(**{"ndcg@10": np.float64(0.1)})  # RecBole's call form: must not raise


def test_recbole_sine_anomaly_detection_switched_off():
    """RecBole's sine.py turns autograd anomaly detection on for the whole process at import."""
    import recbole.model.sequential_recommender  # noqa: F401

    assert not torch.is_anomaly_enabled()



def test_console_log_has_no_colour_codes_off_a_terminal(in_tmp):
    """RecBole's console handler writes plain text when its stream is not a terminal (pytest's
    capture here; a file or a pipe, or a Ray worker's forwarded output, in use)."""
    import logging

    from recbole.config import Config
    from recbole.utils import init_logger, set_color

    from conftest import tiny_config

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # RecBole's basicConfig adds its handlers only to a bare root logger
    try:
        init_logger(Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(in_tmp)))
        (handler,) = [h for h in root.handlers if type(h) is logging.StreamHandler]
        buf = io.StringIO()
        handler.setStream(buf)
        root.info(set_color("epoch 1", "green") + " done")
    finally:
        for h in root.handlers:
            if h not in saved:
                h.close()
        root.handlers[:] = saved
    assert "epoch 1 done" in buf.getvalue()
    assert "\x1b" not in buf.getvalue()


def test_recbole_ensure_dir_tolerates_a_folder_made_meanwhile(tmp_path):
    """Every RecBole module that creates folders (log/, the checkpoint folder) uses an ensure_dir
    that accepts a folder another process has just made (DDP ranks race on it)."""
    import recbole.trainer.trainer
    import recbole.utils.logger
    import recbole.utils.utils

    for module in (recbole.utils.utils, recbole.utils.logger, recbole.trainer.trainer):
        assert module.ensure_dir is compat._ensure_dir
    target = tmp_path / "log" / "MambaRec"
    target.mkdir(parents=True)  # made by the other rank after this one's check
    recbole.utils.utils.ensure_dir(str(target))
    assert target.is_dir()
