"""Shared fixtures: small, real RecBole runs on the ml-100k copy inside RecBole's wheel."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, the Triton kernels run in Triton's CPU interpreter; the switch is read when the
# kernels are decorated, i.e. before recbole_mamba.ops is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import recbole_mamba  # noqa: E402,F401  (compat + registration, as a user's script would)


def tiny_config(tmp_path, **overrides) -> dict:
    """A RecBole config dict that trains in seconds: a subset of ml-100k users, short sequences,
    small models, one epoch; all files written under ``tmp_path``."""
    cfg = {
        "epochs": 1,
        "train_batch_size": 2048,
        "eval_batch_size": 4096,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "d_state": 8,
        "n_heads": 2,
        "k_interests": 4,
        "inner_size": 32,
        "num_layers": 1,
        # keep ~200 users: those with 20..60 interactions
        "user_inter_num_interval": "[20,60]",
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "seed": 2024,
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary working directory (RecBole writes log/ and log_tensorboard/ to cwd)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])  # RecBole's Config parses sys.argv
    return tmp_path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)




def shared_data_dir():
    """The workplace's real data (``../shared/data``; never copied into the repo): the first of
    ``$RECBOLE_MAMBA_SHARED_DATA``, ``<repo>/../shared/data``, ``/work/shared/data`` that exists,
    else ``None`` (the tests that need it are skipped)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("RECBOLE_MAMBA_SHARED_DATA"), root.parent / "shared" / "data",
                  "/work/shared/data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """ml-100k filtered as ``tiny_config`` says, built once per test module (for building models
    directly, without a training run). RecBole writes its log under the working directory, so
    this moves into a temporary one."""
    from recbole.config import Config
    from recbole.data import create_dataset

    os.chdir(tmp_path_factory.mktemp("dataset"))
    cfg = Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(tmp_path_factory.mktemp("cfg")))
    return create_dataset(cfg)


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, read, released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_recbole_main():
    """``main`` of the repository's ``run_recbole.py`` script, loaded as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_recbole_script", Path(__file__).resolve().parents[1] / "run_recbole.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main
