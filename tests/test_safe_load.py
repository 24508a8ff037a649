"""Every file unpickled on the way from a checkpoint goes through the restricted unpickler: a
crafted file is refused with its name, and its payload never runs. Genuine RecBole caches load."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_mamba import recommend
from recbole_mamba.safe_load import load_recbole_cache, load_recbole_checkpoint

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Pickles as ``os.system("touch <marker>")``: the file it names exists iff the payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsConfig:
    """Pickles as a call of RecBole's Config constructor (an allowed type, never an allowed call)."""

    def __reduce__(self):
        from recbole.config import Config

        return (Config, ("SASRec", "ml-100k"))


class StorageBytes:
    """Pickles as ``torch.storage._load_from_bytes(bytes)`` whose bytes hold a payload."""

    def __init__(self, marker: Path):
        buf = io.BytesIO()
        torch.save(Payload(marker), buf)
        self.blob = buf.getvalue()

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.blob,))


class GetattrDunder:
    """Pickles as ``getattr(OrderedDict(), '__class__')``: attribute access outside dataloaders."""

    def __reduce__(self):
        from collections import OrderedDict

        return (getattr, (OrderedDict(), "__class__"))


def _config(tmp_path, **overrides):
    from recbole.config import Config

    return Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(tmp_path, **overrides))


def _checkpoint(path: Path, config) -> Path:
    torch.save({"config": config, "state_dict": {}, "other_parameter": None}, path, pickle_protocol=4)
    return path


def _pickle(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


# (case id, what the crafted pickle holds) for a direct load as checkpoint and as cache
PAYLOADS = [
    ("os-system", lambda m: Payload(m)),
    ("config-constructor", lambda m: CallsConfig()),
    ("storage-bytes", lambda m: StorageBytes(m)),
    ("getattr-dunder", lambda m: GetattrDunder()),
    ("nested-in-dict", lambda m: {"config": {"a": [1, Payload(m)]}}),
]


@pytest.mark.parametrize("kind", ["checkpoint", "cache"])
@pytest.mark.parametrize("case,make", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, kind, case, make):
    marker = tmp_path / "ran"
    path = tmp_path / f"{case}.pth"
    if kind == "checkpoint":
        torch.save({"config": make(marker)}, path, pickle_protocol=4)
        with pytest.raises(pickle.UnpicklingError, match="refusing") as err:
            load_recbole_checkpoint(path)
    else:
        _pickle(path, make(marker))
        with open(path, "rb") as f, pytest.raises(pickle.UnpicklingError, match="refusing") as err:
            load_recbole_cache(f)
        assert "delete it" in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_checkpoint_config_pointing_at_a_crafted_dataset_cache(in_tmp):
    """The checkpoint is genuine, its config's dataset_save_path names a crafted file."""
    from recbole.quick_start import load_data_and_model

    marker = in_tmp / "ran"
    evil = _pickle(in_tmp / "evil-dataset.pth", Payload(marker))
    ckpt = _checkpoint(in_tmp / "model.pth", _config(in_tmp, dataset_save_path=str(evil)))
    with pytest.raises(pickle.UnpicklingError, match="evil-dataset.pth"):
        load_data_and_model(str(ckpt))
    with pytest.raises(recommend.RecommendError, match="evil-dataset.pth"):
        recommend.load_model(ckpt)
    assert not marker.exists()


def test_checkpoint_config_pointing_at_a_crafted_dataloader_cache(in_tmp):
    from recbole.quick_start import load_data_and_model

    marker = in_tmp / "ran"
    evil = _pickle(in_tmp / "evil-loaders.pth", [(Payload(marker), None)] * 3)
    ckpt = _checkpoint(in_tmp / "model.pth", _config(in_tmp, dataloaders_save_path=str(evil)))
    with pytest.raises(pickle.UnpicklingError, match="evil-loaders.pth"):
        load_data_and_model(str(ckpt))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["ml-100k-LazySequentialDataset.pth", "ml-100k-for-MambaRec-dataloader.pth"])
def test_planted_cache_next_to_checkpoints_stops_a_training_run(in_tmp, name):
    """RecBole reads these default cache paths whenever they exist, for any run."""
    from recbole.quick_start import run_recbole

    marker = in_tmp / "ran"
    saved = in_tmp / "saved"
    saved.mkdir()
    _pickle(saved / name, Payload(marker))
    with pytest.raises(pickle.UnpicklingError, match=name):
        run_recbole(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(in_tmp))
    assert not marker.exists()


def test_recommend_cli_refuses_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "crafted.pth"
    torch.save({"config": Payload(marker), "state_dict": {}}, ckpt, pickle_protocol=4)
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_mamba.recommend", "--checkpoint", str(ckpt), "--users", "1"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    assert "refusing" in proc.stderr and str(ckpt) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_genuine_caches_are_read_back(in_tmp, caplog):
    """RecBole's own dataset and dataloader caches pass the restricted loader unchanged."""
    from recbole.data import create_dataset, data_preparation

    cfg = _config(in_tmp, save_dataset=True, save_dataloaders=True)
    first = create_dataset(cfg)
    train, _, _ = data_preparation(cfg, first)
    saved = sorted(p.name for p in (in_tmp / "saved").iterdir())
    assert saved == ["ml-100k-LazySequentialDataset.pth", "ml-100k-for-MambaRec-dataloader.pth"]
    cfg = _config(in_tmp)
    with caplog.at_level("INFO"):
        again = create_dataset(cfg)
        train2, _, _ = data_preparation(cfg, again)
    text = caplog.text
    assert "Load filtered dataset from" in text and "Load split dataloaders from" in text
    assert again.inter_num == first.inter_num
    assert len(train2) == len(train)
