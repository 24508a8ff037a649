"""The smallest set of fixes that makes recbole 1.2.1 correct on today's stack.

Each fix is a named function, applied once by :func:`apply` (called by ``import recbole_mamba``)
and each has a test in ``tests/test_compat.py`` that fails without it.

* :func:`fix_numpy2_aliases` -- NumPy 2 removed ``np.float_``, ``np.complex_`` and
  ``np.unicode_``; RecBole's ``Config.compatibility_settings`` reads them on every ``Config(...)``
  and crashes with ``AttributeError`` before any model is built. We define the three aliases to
  the types NumPy 1 gave them (nothing else is touched).
* :func:`fix_pandas_copy_on_write` -- pandas 3 always uses copy-on-write, so RecBole's chained
  ``df[col].fillna(..., inplace=True)`` silently does nothing: NaN stays in token/float features
  (``Dataset._fill_nan``) and empty ``token_seq`` cells crash the loader (``Dataset._load_feat``).
  We replace ``_fill_nan`` by the same logic written with assignments, and give
  ``recbole.data.dataset.dataset`` a ``read_csv`` that fills empty ``*_seq`` cells with ``""``
  right after reading (what the chained call meant to do). ``Dataset._remap`` also used
  ``Series.agg(len)``, which on pandas 3 is the row count rather than each row's length, so
  every ``token_seq`` field was split wrongly; it is replaced by the same code with ``map(len)``.
* :func:`fix_torch_safe_load` -- torch >= 2.6 loads with ``weights_only=True``; RecBole pickles
  its whole ``Config`` (enums, ``torch.device``, the model class, the yaml loader class) into every
  checkpoint with pickle protocol 4, so ``Trainer.evaluate(load_best_model=True)`` (the test step
  of every ``run_recbole``), ``Trainer.resume_checkpoint`` and
  ``quick_start.load_data_and_model`` fail. Those three reads go through
  :func:`recbole_mamba.safe_load.load_recbole_checkpoint`, an unpickler that runs no code from
  the file; so do RecBole's reads of its dataset and dataloader caches (plain ``pickle.load`` in
  ``recbole.data.utils``, on files a checkpoint's config may name). ``torch.load`` itself is untouched:
  no global ``weights_only=False``. ``load_data_and_model`` also runs the unpickled config's
  ``compatibility_settings`` (RecBole's ``np.float`` & co., which only building a ``Config``
  sets): without it, evaluating a reloaded model in a fresh process crashed in NDCG.
* :func:`fix_ray_tune_report` -- RecBole's ``objective_function`` calls ``tune.report(**dict)``,
  which Ray 2.x replaced by ``tune.report(dict)``; we translate the call.

Known and left alone: ``Series.agg(len)`` in RecBole's normalisation/discretisation of
``float_seq`` fields is also wrong on pandas 3; none of the datasets or models of this package
use ``float_seq`` fields.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import numpy as np
import pandas as pd
import torch

from recbole_mamba.standin import ModuleStandIn
from recbole_mamba.safe_load import (
    PickleForRecBoleData,
    RestrictedUnpickler,
    allow_class,
    load_recbole_checkpoint,
)

_APPLIED = False
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- NumPy 2
_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}


def fix_numpy2_aliases() -> list[str]:
    """Define the NumPy 1 aliases RecBole reads, where NumPy 2 removed them.

    Returns the names that were added (empty on NumPy 1).
    """
    added = []
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))
            added.append(alias)
    return added


# --------------------------------------------------------------------------- pandas 3
def _fill_nan(self) -> None:
    """``recbole.data.dataset.Dataset._fill_nan`` written without chained in-place calls.

    Same behaviour as RecBole 1.2.1 on pandas < 3: token NaN -> 0 (``[PAD]``), float NaN -> the
    column mean, missing sequences -> empty arrays.
    """
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def _object_column(arrays: list, index: pd.Index) -> pd.Series:
    """A column holding one NumPy array per row (never expanded into 2-D by pandas)."""
    col = pd.Series([None] * len(arrays), index=index, dtype=object)
    for i, arr in enumerate(arrays):
        col.iat[i] = arr
    return col


def _remap(self, remap_list: list) -> None:
    """``Dataset._remap`` with per-row lengths taken by ``Series.map(len)``.

    RecBole's ``feat[field].agg(len)`` returns the number of rows on pandas 3 (not the length of
    each row's token sequence), so every ``token_seq`` field is split at the wrong points.
    Same behaviour as RecBole 1.2.1 on pandas < 3.
    """
    from recbole.utils import FeatureType

    if len(remap_list) == 0:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids_list, mp = pd.factorize(tokens)
    new_ids_list = np.split(new_ids_list + 1, split_point)
    mp = np.array(["[PAD]"] + list(mp))
    token_id = {t: i for i, t in enumerate(mp)}
    for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
        if field not in self.field2id_token:
            self.field2id_token[field] = mp
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = new_ids
        elif ftype == FeatureType.TOKEN_SEQ:
            split_point = np.cumsum(feat[field].map(len).to_numpy())[:-1]
            feat[field] = _object_column(np.split(new_ids, split_point), feat.index)


class _PandasForRecBoleLoader(ModuleStandIn):
    """Stands in for ``pandas`` inside ``recbole.data.dataset.dataset`` only.

    Every attribute is pandas' own, except ``read_csv``, which fills empty cells of
    ``*_seq`` columns with ``""`` (RecBole's ``df[field].fillna(value="", inplace=True)`` that
    copy-on-write turns into a no-op, leaving NaN that ``str.split`` then crashes on).
    """

    module = "pandas"

    @staticmethod
    def read_csv(*args: Any, **kwargs: Any) -> pd.DataFrame:
        df = pd.read_csv(*args, **kwargs)
        usecols = kwargs.get("usecols")
        if usecols is not None:
            for col in usecols:
                if isinstance(col, str) and col.endswith("seq") and col in df.columns:
                    df[col] = df[col].fillna("")
        return df


def fix_pandas_copy_on_write() -> None:
    """Make RecBole's NaN handling effective under pandas' copy-on-write."""
    import recbole.data.dataset.dataset as ds_mod

    ds_mod.Dataset._fill_nan = _fill_nan
    ds_mod.Dataset._remap = _remap
    ds_mod.pd = _PandasForRecBoleLoader()


# --------------------------------------------------------------------------- torch.load
# RecBole saves checkpoints with ``pickle_protocol=4``, whose FRAME opcode torch's own
# ``weights_only`` unpickler rejects ("Unsupported operand 149") whatever is allow-listed. So
# RecBole's checkpoint reads, and its dataset/dataloader cache reads (plain ``pickle.load``), go
# through :mod:`recbole_mamba.safe_load` instead.


def allow_model_class(cls: type) -> None:
    """Allow a model class in RecBole checkpoints (its Config names the model class).

    The registry calls this for every model it registers (ours); RecBole's own model classes
    are accepted without it.
    """
    allow_class(cls)


class _TorchForRecBoleTrainer(ModuleStandIn):
    """Stands in for ``torch`` inside ``recbole.trainer.trainer``: ``load`` is
    :func:`load_recbole_checkpoint`, every other attribute is torch's own."""

    module = "torch"

    @staticmethod
    def load(f: Any, map_location: Any = None, **_: Any) -> Any:
        return load_recbole_checkpoint(f, map_location=map_location)


def _load_data_and_model(model_file: str, config_overrides: dict | None = None) -> tuple:
    """``recbole.quick_start.load_data_and_model`` with the safe checkpoint loader.

    Same steps and return value as RecBole 1.2.1's function, plus the NumPy aliases that
    building a ``Config`` would have set. ``config_overrides`` (ours; keyword, default none)
    replaces config values before the data set is built, and is checked as a config is; a
    ``device`` among them is also where the weights are loaded.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_logger, init_seed

    from recbole_mamba.config_check import check_values

    overrides = dict(config_overrides or {})
    checkpoint = load_recbole_checkpoint(model_file, map_location=overrides.get("device"))
    config = checkpoint["config"]
    for key, value in overrides.items():
        config[key] = value
    if overrides:
        check_values(config)
    # The config is unpickled, not built, so RecBole's own NumPy aliases (np.float, np.int, ...;
    # ``Config.compatibility_settings``, run by every ``Config(...)``) were never set in a fresh
    # process, and its NDCG metric (``np.float``) crashed the first evaluation after loading.
    config.compatibility_settings()
    if not config["single_spec"]:  # written by rank 0 of a DDP run: load and evaluate in one process
        config["single_spec"] = True
        config["local_rank"] = 0
        config["world_size"] = 1
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()
    log.info(config)

    dataset = create_dataset(config)
    log.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def fix_torch_safe_load() -> None:
    """Route RecBole's checkpoint and cache reads through :mod:`recbole_mamba.safe_load`."""
    import recbole.quick_start as qs_pkg
    import recbole.quick_start.quick_start as qs_mod
    import recbole.trainer.trainer as trainer_mod

    import recbole.data.utils as data_utils

    trainer_mod.torch = _TorchForRecBoleTrainer()
    data_utils.pickle = PickleForRecBoleData()
    qs_mod.load_data_and_model = _load_data_and_model
    qs_pkg.load_data_and_model = _load_data_and_model


# --------------------------------------------------------------------------- Ray 2.x
def _in_tune_session() -> bool:
    """True inside a Ray Tune trial (``get_trial_id`` is None elsewhere)."""
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


class _TuneForRecBole(ModuleStandIn):
    """Stands in for ``ray.tune`` inside ``recbole.quick_start.quick_start``.

    RecBole's ``objective_function`` ends with ``tune.report(**test_result)``; Ray 2.x's
    ``tune.report`` takes one metrics dict, so that line raises ``TypeError`` inside a trial.
    Here the keyword form is turned into the dict form inside a trial, and is a no-op outside one
    (RecBole returns the same results from the function anyway).
    """

    module = "ray.tune"

    @staticmethod
    def report(*args: Any, **kwargs: Any) -> None:
        from ray import tune

        if args:
            tune.report(*args, **kwargs)
            return
        if _in_tune_session():
            tune.report({k: float(v) if isinstance(v, (int, float, np.number)) else v
                         for k, v in kwargs.items()})


def fix_ray_tune_report() -> None:
    """Make RecBole's ``objective_function`` run on Ray 2.x (in and out of a Tune trial)."""
    import recbole.quick_start.quick_start as qs_mod

    qs_mod.tune = _TuneForRecBole()


def rebind_in_recbole(name: str, original: Any, replacement: Any) -> None:
    """Point every loaded ``recbole`` module whose ``name`` is ``original`` at ``replacement``
    (RecBole binds its helpers by name: ``from recbole.utils import get_model`` and the like)."""
    for mod_name, module in list(sys.modules.items()):
        if (mod_name == "recbole" or mod_name.startswith("recbole.")) and getattr(module, name, None) is original:
            setattr(module, name, replacement)


_ORIGINAL_INIT_LOGGER = None


def _init_logger(config: Any) -> None:
    """RecBole's ``init_logger``, then plain text on a console stream that is not a terminal."""
    import logging
    import sys

    from recbole.utils.logger import RemoveColorFilter

    _ORIGINAL_INIT_LOGGER(config)
    for handler in logging.getLogger().handlers:
        if type(handler) is not logging.StreamHandler:  # FileHandler subclasses StreamHandler
            continue
        stream = getattr(handler, "stream", None) or sys.stderr
        if os.environ.get("FORCE_COLOR") or (hasattr(stream, "isatty") and stream.isatty()):
            continue
        handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M"))
        handler.addFilter(RemoveColorFilter())


def fix_log_colours() -> None:
    """No ANSI colour codes in RecBole's console log when it goes to a file or a pipe.

    RecBole colours its console output (a ``colorlog`` formatter, and ``set_color`` inside the
    messages: the config dump, each epoch's line) whatever the stream is; only its log file is
    stripped. Redirected output (``run_recbole.py > run.log``, the retraining in ``run_hyper.py``,
    CI logs) then holds raw escape codes. ``FORCE_COLOR`` keeps the colours."""
    global _ORIGINAL_INIT_LOGGER
    import recbole.utils
    import recbole.utils.logger

    if _ORIGINAL_INIT_LOGGER is None:
        _ORIGINAL_INIT_LOGGER = recbole.utils.logger.init_logger
    import recbole.quick_start.quick_start  # noqa: F401  (binds init_logger by name)

    rebind_in_recbole("init_logger", _ORIGINAL_INIT_LOGGER, _init_logger)


def _ensure_dir(dir_path: str) -> None:
    os.makedirs(dir_path, exist_ok=True)


def fix_ensure_dir_race() -> None:
    """RecBole's ``ensure_dir`` (``if not exists: makedirs``) without its race.

    Under ``--nproc`` every process creates ``./log/<Model>`` and the checkpoint folder; two
    that pass the existence check together make one of them fail with ``FileExistsError``."""
    import recbole.utils.utils

    original = recbole.utils.utils.ensure_dir
    if original is _ensure_dir:
        return
    import recbole.trainer.trainer  # noqa: F401  (binds ensure_dir by name)
    import recbole.utils.logger  # noqa: F401

    rebind_in_recbole("ensure_dir", original, _ensure_dir)


# --------------------------------------------------------------------------- entry point
def fix_global_anomaly_detection() -> None:
    """Undo ``torch.autograd.set_detect_anomaly(True)`` that RecBole's ``sine.py`` runs at import.

    ``recbole.model.sequential_recommender/__init__.py`` imports every sequential model, and
    ``sine.py`` switches anomaly detection on for the whole process at import time. So every
    sequential run through RecBole (ours, SASRec, ...) records a traceback per autograd node
    (slow) and turns a single NaN in a backward pass into a crash. We import the package once
    here and switch it off again; a user who wants it can still call
    ``torch.autograd.set_detect_anomaly(True)`` afterwards.
    """
    import torch

    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's side effect now)

    torch.autograd.set_detect_anomaly(False)


def apply() -> None:
    """Apply every fix once (idempotent). Called by ``import recbole_mamba``."""
    global _APPLIED
    if _APPLIED:
        return
    fix_numpy2_aliases()
    fix_pandas_copy_on_write()
    fix_torch_safe_load()
    fix_ray_tune_report()
    fix_global_anomaly_detection()
    fix_log_colours()
    fix_ensure_dir_race()
    _APPLIED = True


__all__ = [
    "apply",
    "allow_model_class",
    "fix_numpy2_aliases",
    "fix_pandas_copy_on_write",
    "fix_torch_safe_load",
    "fix_ray_tune_report",
    "fix_global_anomaly_detection",
    "fix_log_colours",
    "fix_ensure_dir_race",
    "load_recbole_checkpoint",
    "RestrictedUnpickler",
]
