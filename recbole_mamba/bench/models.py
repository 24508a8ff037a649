"""Models for the benchmarks, built through RecBole's own ``Config`` on a real dataset.

The benchmarks time models at many sequence lengths; what they need from a dataset is only its
field names and item count, so one dataset (ml-100k from RecBole's wheel by default) is loaded
once and every model is built on it with ``MAX_ITEM_LIST_LENGTH`` set to the length measured.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile

import torch

import recbole_mamba  # noqa: F401  (compat fixes, registration)
from recbole_mamba.cli import recbole_sees_no_flags

#: the common ground of every model in a benchmark: CE over all items, no sampled negatives
BENCH_CONFIG = {
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "hidden_size": 64,
    "show_progress": False,
    "log_wandb": False,
    "seed": 2024,
}


@contextlib.contextmanager
def _quiet_recbole():
    """RecBole's ``Config`` parses ``sys.argv`` and writes ``log/`` under the working directory:
    keep the benchmark's own flags away from it and its files in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="recbole-mamba-bench-") as tmp, recbole_sees_no_flags(tmp):
        yield tmp


@functools.lru_cache(maxsize=4)
def bench_dataset(name: str = "ml-100k"):
    """RecBole's dataset ``name`` (loaded and filtered once per process)."""
    from recbole.config import Config
    from recbole.data import create_dataset

    with _quiet_recbole():
        config = Config(model="SASRec", dataset=name, config_dict=dict(BENCH_CONFIG))
        return create_dataset(config)


def build_model_and_transform(model: str, length: int, device: str = "cpu", dataset: str = "ml-100k",
                              **overrides):
    """(``model`` (ours or RecBole's) with ``MAX_ITEM_LIST_LENGTH = length`` on ``device`` in
    eval mode, its RecBole batch transform); ``overrides`` are RecBole config keys."""
    from recbole.config import Config
    from recbole.data.transform import construct_transform

    from recbole_mamba.registry import get_model

    data = bench_dataset(dataset)
    config_dict = {**BENCH_CONFIG, "MAX_ITEM_LIST_LENGTH": int(length), **overrides}
    with _quiet_recbole():
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
    config["device"] = torch.device(device)
    # RecBole builds the batch transform (BERT4Rec's masking) with the dataloaders, before the
    # model, and the transform names the fields the model then reads from its config
    transform = construct_transform(config)
    torch.manual_seed(0)
    return get_model(model)(config, data).to(device).eval(), transform


def build_model(model: str, length: int, device: str = "cpu", dataset: str = "ml-100k",
                **overrides) -> torch.nn.Module:
    """``model`` (ours or RecBole's) with ``MAX_ITEM_LIST_LENGTH = length``, on ``device``,
    in eval mode; ``overrides`` are RecBole config keys."""
    return build_model_and_transform(model, length, device, dataset, **overrides)[0]


def training_batch(model: torch.nn.Module, transform, seqs: torch.Tensor, dataset: str = "ml-100k"):
    """A training ``Interaction`` from ``seqs`` (batch, L + 1): the first L items as the history,
    the last as the target, passed through the model's RecBole batch ``transform`` (from
    :func:`build_model_and_transform`, e.g. BERT4Rec's ``mask_itemseq``), as RecBole's training
    dataloader does."""
    from recbole.data.interaction import Interaction

    batch, length = seqs.shape[0], seqs.shape[1] - 1
    data = Interaction({
        model.ITEM_SEQ: seqs[:, :-1], model.ITEM_SEQ_LEN: torch.full((batch,), length, device=seqs.device),
        model.POS_ITEM_ID: seqs[:, -1],
    }).to(seqs.device)
    return transform(bench_dataset(dataset), data)


def random_sequences(n_items: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) random internal item ids in [1, n_items)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, n_items, (batch, length), generator=g)
