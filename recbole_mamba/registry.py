"""Registration of our models into RecBole, and loading of our YAML property files.

After :func:`register` (run by ``import recbole_mamba``):

* ``recbole.utils.get_model`` -- and every RecBole module that imported it by name (the
  ``Config``, ``quick_start``: ``run_recbole``, ``run_recboles``, ``objective_function``,
  ``load_data_and_model``) -- finds our models by name. An unknown name raises a ``ValueError``
  that lists the available models instead of RecBole's lightgbm ``ModuleNotFoundError``.
* ``Config`` loads ``properties/model/<Model>.yaml`` for our models at the same place in its
  order as RecBole's own model files (after ``overall.yaml``; RecBole's dataset and quick-start
  files, then user config files, dicts and command-line flags override it), and
  ``properties/dataset/<dataset>.yaml`` when we ship one.
* RecBole's ``TrainDataLoader`` counts ``train_batch_size`` in training targets for
  all-position windows (see :mod:`recbole_mamba.data.lazy_dataset`).
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import recbole.utils
import recbole.utils.utils as recbole_utils
from recbole.config.configurator import Config
from recbole.data.dataloader.general_dataloader import TrainDataLoader

from recbole_mamba import compat

_MODELS: dict[str, type] = {}
_ORIGINAL_GET_MODEL = recbole_utils.get_model
_ORIGINAL_UPDATE = Config._update_internal_config_dict
_ORIGINAL_SET_DEFAULTS = Config._set_default_parameters
_RECBOLE_PROPERTIES = Path(recbole_utils.__file__).resolve().parent.parent / "properties"
_ORIGINAL_TRAIN_BATCH = TrainDataLoader._init_batch_size_and_step
_REGISTERED = False


def properties_dir() -> Path:
    """Our ``properties/`` folder: inside the installed package, or at the source-tree root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "model").is_dir():
            return candidate
    raise FileNotFoundError(
        f"recbole_mamba's properties/ folder was not found next to {here}; reinstall the package"
    )


def model_properties_file(model: str) -> Path | None:
    """``properties/model/<model>.yaml`` for one of our models, else ``None``."""
    path = properties_dir() / "model" / f"{model}.yaml"
    return path if model in _MODELS and path.is_file() else None


def dataset_properties_file(dataset: str) -> Path | None:
    """``properties/dataset/<dataset>.yaml`` if we ship one, else ``None``."""
    path = properties_dir() / "dataset" / f"{dataset}.yaml"
    return path if path.is_file() else None


def register_model(cls: type) -> type:
    """Make ``cls`` (a RecBole recommender class) findable by its class name."""
    _MODELS[cls.__name__] = cls
    compat.allow_model_class(cls)
    return cls


def register_dataset(model_name: str, dataset_cls: type) -> None:
    """Make RecBole's ``create_dataset`` build ``dataset_cls`` for ``model_name``.

    RecBole looks up ``recbole.data.dataset.<model>Dataset`` before its default classes.
    """
    import recbole.data.dataset as dataset_module

    setattr(dataset_module, f"{model_name}Dataset", dataset_cls)


def registered_models() -> list[str]:
    """Names of the models this package registered."""
    return sorted(_MODELS)


def recbole_models() -> list[str]:
    """Names of RecBole's built-in models (those whose dependencies import here)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names = set()
    for sub in ("general_recommender", "context_aware_recommender", "sequential_recommender",
                "knowledge_aware_recommender"):
        try:
            mod = importlib.import_module(f"recbole.model.{sub}")
        except ImportError:
            continue
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender) and obj.__module__.startswith(mod.__name__):
                names.add(name)
    return sorted(names)


def get_model(model_name: str) -> type:
    """RecBole's ``get_model`` that also knows our models and fails clearly on unknown names."""
    if model_name in _MODELS:
        return _MODELS[model_name]
    try:
        cls = _ORIGINAL_GET_MODEL(model_name)
    except (ValueError, ImportError, AttributeError) as exc:  # AttributeError: "SASrec" finds sasrec.py
        ours = registered_models()
        theirs = recbole_models()
        close = difflib.get_close_matches(model_name, ours + theirs, n=3, cutoff=0.6)
        lower = [m for m in ours + theirs if m.lower() == str(model_name).lower()]
        hint = f" Did you mean {', '.join(lower or close)}?" if (lower or close) else ""
        raise ValueError(
            f"Unknown model {model_name!r}.{hint}\n"
            f"recbole_mamba models: {', '.join(ours)}\n"
            f"RecBole models: {', '.join(theirs)}\n"
            f"(RecBole's own lookup said: {type(exc).__name__}: {exc})"
        ) from None
    return cls  # RecBole's own classes need no allow-listing: see safe_load._is_recbole_model


def _update_internal_config_dict(self: Config, file: str) -> dict | None:
    """``Config._update_internal_config_dict`` that slots our YAML files into RecBole's order."""
    result = _ORIGINAL_UPDATE(self, file)
    path = Path(file).resolve()
    if path.parent.parent != _RECBOLE_PROPERTIES and path.parent != _RECBOLE_PROPERTIES:
        return result
    if path == _RECBOLE_PROPERTIES / "overall.yaml":
        ours = model_properties_file(self.model)
        if ours is not None:
            _ORIGINAL_UPDATE(self, str(ours))
    elif path.parent == _RECBOLE_PROPERTIES / "dataset":
        builtin = _RECBOLE_PROPERTIES / "dataset" / f"{self.dataset}.yaml"
        is_sample = path.name == "sample.yaml"
        if (is_sample and not builtin.is_file()) or path == builtin:
            ours = dataset_properties_file(self.dataset)
            if ours is not None:
                loaded = _ORIGINAL_UPDATE(self, str(ours)) or {}
                self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]
    return result


def _default_neg_sampling_off_for_ce(self: Config) -> None:
    """RecBole's ``overall.yaml`` draws one negative per training row, and its own check then
    refuses every sequential model trained with CE (SASRec, GRU4Rec, BERT4Rec, ... by default) unless
    ``--train_neg_sample_args=None`` is given. When the user did not set
    ``train_neg_sample_args``, a CE sequential model gets ``None`` (what CE needs); a value the
    user gave is kept, and RecBole's check still refuses it."""
    from recbole.utils import ModelType

    final = self.final_config_dict
    given = ("train_neg_sample_args" in self.file_config_dict or "train_neg_sample_args" in self.variable_config_dict
             or "train_neg_sample_args" in self.cmd_config_dict)
    if (not given and final.get("loss_type") == "CE"
            and getattr(self.model_class, "type", None) == ModelType.SEQUENTIAL):
        final["train_neg_sample_args"] = None


#: RecBole's names for two of our models' keys: ``--n_layers=2`` on MambaRec means ``num_layers: 2``
RECBOLE_NAMES = {"n_layers": "num_layers", "hidden_dropout_prob": "dropout_prob"}


def _accept_recbole_names(self: Config) -> None:
    """Our models read ``num_layers`` and ``dropout_prob``; a user who writes RecBole's names
    (``n_layers``, ``hidden_dropout_prob``, as for SASRec) in a config file, a config dict or on
    the command line gets them applied. The same key under both names with two values is an
    error, not a silent choice."""
    final = self.final_config_dict
    sources = (self.file_config_dict, self.variable_config_dict, self.cmd_config_dict)
    for theirs, ours in RECBOLE_NAMES.items():
        if not any(theirs in src for src in sources):
            continue
        value = final[theirs]
        if any(ours in src for src in sources) and final[ours] != value:
            raise ValueError(
                f"{self.model}: {theirs}={value} (RecBole's name) and {ours}={final[ours]} were both given; "
                f"{self.model} reads {ours}. Give one of them."
            )
        final[ours] = value


def _set_default_parameters(self: Config) -> None:
    """``Config._set_default_parameters`` that also knows our losses.

    RecBole derives ``MODEL_INPUT_TYPE`` from ``loss_type`` (CE: point-wise, BPR: pair-wise) and
    leaves it unset for any other loss. BCE with one sampled negative is pair-wise input; SS and
    gBCE draw their own shared negatives, so they are point-wise and, like CE, need
    ``train_neg_sample_args: None`` (RecBole's negatives would be fed to them as positives).
    """
    _default_neg_sampling_off_for_ce(self)
    _ORIGINAL_SET_DEFAULTS(self)
    from recbole_mamba.baselines import CAUSAL_BASELINES
    from recbole_mamba.models.losses import SHARED_NEGATIVE_LOSSES

    if self.model in _MODELS:
        _accept_recbole_names(self)
    if self.model not in _MODELS and self.model not in CAUSAL_BASELINES:
        return
    from recbole.utils import InputType

    loss_type = self.final_config_dict.get("loss_type")
    if loss_type == "BCE" and self.model in _MODELS:
        self.final_config_dict["MODEL_INPUT_TYPE"] = InputType.PAIRWISE
    elif loss_type in SHARED_NEGATIVE_LOSSES:
        neg = self.final_config_dict.get("train_neg_sample_args")
        if neg not in (None, "None") and not (isinstance(neg, dict) and neg.get("distribution") in (None, "None", "none")):
            raise ValueError(
                f"{self.model}: loss_type {loss_type} draws its own n_negatives shared negatives per "
                f"batch, so RecBole's train_neg_sample_args must be None (got {neg}). Pass "
                "--train_neg_sample_args=None (or train_neg_sample_args: ~ in a config file)."
            )
        self.final_config_dict["MODEL_INPUT_TYPE"] = InputType.POINTWISE


def _train_init_batch_size_and_step(self) -> None:
    """``TrainDataLoader._init_batch_size_and_step`` with ``train_batch_size`` counted in training
    targets for all-position windows (:func:`recbole_mamba.data.rows_per_batch`). RecBole's
    negatives per row (``self.times``) are kept on top, as RecBole does."""
    _ORIGINAL_TRAIN_BATCH(self)
    from recbole_mamba.data import rows_per_batch

    rows = rows_per_batch(self._dataset, self.step)
    if rows != self.step:
        times = self.times if self.neg_sample_args["distribution"] != "none" else 1
        self.step = rows
        self.set_batch_size(rows * times)


def register() -> None:
    """Register our models and patch RecBole's lookups (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    # Import every RecBole module that binds get_model by name, so we can rebind it.
    import recbole.config.configurator  # noqa: F401
    import recbole.quick_start.quick_start  # noqa: F401

    from recbole_mamba.data import LazySequentialDataset
    from recbole_mamba.models import MambaRec, MLSA4Rec, MoEMaTrRec

    compat.allow_class(LazySequentialDataset)
    for cls in (MambaRec, MoEMaTrRec, MLSA4Rec):
        register_model(cls)
        register_dataset(cls.__name__, LazySequentialDataset)
    import recbole.model.sequential_recommender as seq_models

    from recbole_mamba.baselines import CAUSAL_BASELINES, enable_all_positions, reject_all_positions

    for name in CAUSAL_BASELINES:
        enable_all_positions(getattr(seq_models, name))
        register_dataset(name, LazySequentialDataset)
    from recbole.model.abstract_recommender import SequentialRecommender

    # every other RecBole sequential model (BERT4Rec, LightSANs, NARM, ... ~30) refuses
    # train_mode: all_positions rather than silently training on RecBole's augmented rows
    for name, obj in vars(seq_models).items():
        if (isinstance(obj, type) and issubclass(obj, SequentialRecommender) and obj is not SequentialRecommender
                and name not in CAUSAL_BASELINES and obj.__module__.startswith("recbole.model.")):
            reject_all_positions(obj)
    compat.rebind_in_recbole("get_model", _ORIGINAL_GET_MODEL, get_model)
    recbole.utils.get_model = get_model
    Config._update_internal_config_dict = _update_internal_config_dict
    Config._set_default_parameters = _set_default_parameters
    TrainDataLoader._init_batch_size_and_step = _train_init_batch_size_and_step
    _REGISTERED = True


__all__ = ["register", "register_model", "register_dataset", "registered_models", "recbole_models", "get_model",
           "properties_dir", "model_properties_file", "dataset_properties_file"]

