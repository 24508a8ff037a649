"""Checks of a RecBole config before anything runs: one line naming the key, the value and what
is accepted, instead of a traceback (or a silent misbehaviour) epochs later.

After :func:`install` (run by ``import recbole_mamba``) every ``recbole.config.Config``:

* names the file and line of a YAML syntax error in a config file, says when a config file is
  missing or does not hold a ``key: value`` mapping;
* refuses a key the user gave (config file, dict or command line) that is not a known key but is
  close to one (``learning_rat`` -> "did you mean learning_rate?"); a key far from every known one
  is passed on, as RecBole does, since custom models read their own keys;
* checks the type and range of each key in :data:`CHECKS` that RecBole's trainer, its data
  pipeline or our models read.

All failures raise :class:`ConfigError` (a ``ValueError``); the command-line tools print its
message and exit non-zero.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value, key or file that RecBole cannot run with."""


# ----------------------------------------------------------------------------- value checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def number_in(low: float, high: float | None, low_open: bool = False, high_open: bool = False):
    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if v < low or (low_open and v == low):
            return False
        return high is None or v < high or (v == high and not high_open)

    lo = "(" if low_open else "["
    hi = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
    return ok, f"a number in {lo}{low}, {hi}"


def one_of(*choices: str, case: bool = True):
    if case:
        return (lambda v: v in choices), "one of " + ", ".join(choices)
    lowered = {c.lower() for c in choices}
    return (lambda v: isinstance(v, str) and v.lower() in lowered), "one of " + ", ".join(choices)


BOOL = ((lambda v: isinstance(v, bool)), "True or False")
OPTIONAL_DICT = ((lambda v: v is None or isinstance(v, dict)), "a mapping or None")
TOPK = ((lambda v: (_is_int(v) and v >= 1) or (isinstance(v, list) and v and all(_is_int(k) and k >= 1 for k in v))),
        "a positive integer or a list of them, e.g. [10] or [5,10,20]")
METRICS = ((lambda v: isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(m, str) for m in v))),
           "a metric name or a list of them, e.g. [Hit,NDCG]")
SEED = ((lambda v: _is_int(v) and v >= 0), "a non-negative integer")
DROPOUT = number_in(0.0, 1.0, high_open=True)

# key -> (predicate, what is accepted). Keys read by RecBole's trainer and data pipeline for every
# model, then keys of our models and losses (checked only when present).
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": int_at_least(1),
    "train_batch_size": int_at_least(1),
    "eval_batch_size": int_at_least(1),
    "learning_rate": number_in(0.0, None, low_open=True),
    "weight_decay": number_in(0.0, None),
    "stopping_step": int_at_least(1),
    "eval_step": int_at_least(0),
    "seed": SEED,
    "MAX_ITEM_LIST_LENGTH": int_at_least(1),
    "topk": TOPK,
    "metrics": METRICS,
    "learner": one_of("adam", "sgd", "adagrad", "rmsprop", "sparse_adam", case=False),
    "clip_grad_norm": OPTIONAL_DICT,
    "train_neg_sample_args": OPTIONAL_DICT,
    "eval_args": ((lambda v: isinstance(v, dict)), "a mapping (split, order, group_by, mode)"),
    "show_progress": BOOL,
    "reproducibility": BOOL,
    "use_gpu": BOOL,
    "save_dataset": BOOL,
    "save_dataloaders": BOOL,
    "shuffle": BOOL,
    "valid_metric_bigger": BOOL,
    "repeatable": BOOL,
    # our models, losses and training modes
    "hidden_size": int_at_least(1),
    "num_layers": int_at_least(0),  # MLSA4Rec: 0 = its interaction layer only
    "d_state": int_at_least(1),
    "d_conv": int_at_least(1),
    "expand": int_at_least(1),
    "n_heads": int_at_least(1),
    "n_layers": int_at_least(1),
    "dropout_prob": ((lambda v: v == "auto" or DROPOUT[0](v)), DROPOUT[1] + " or auto"),
    "hidden_dropout_prob": DROPOUT,
    "attn_dropout_prob": DROPOUT,
    "n_negatives": int_at_least(1),
    "ss_in_batch": number_in(0.0, 1.0),
    "gbce_t": number_in(0.0, 1.0),
    "ss_sampling": one_of("uniform", "popularity"),
    "ss_logq": BOOL,
    "train_mode": one_of("all_positions", "augment"),
    "train_windows": one_of("all", "last"),
    "train_batch_unit": one_of("targets", "sequences"),
    "eval_filter_seen": BOOL,
    "train_exclude_seen": BOOL,
    "eval_item_chunk": int_at_least(1),
    "keep_freed_memory": BOOL,
    "sparse_item_embedding": ((lambda v: v is True or v is False or v == "auto"), "True, False or auto"),
    "mamba_variant": one_of("attention", "block"),
    "mamba_backend": one_of("auto", "mamba_ssm", "triton", "cpu", "reference"),
}
REQUIRED = ("epochs", "train_batch_size", "eval_batch_size", "learning_rate", "stopping_step")
# loss_type as our models and the plugin's SASRec/GRU4Rec accept it
OUR_LOSSES = ("CE", "BPR", "BCE", "SS", "gBCE")


# ----------------------------------------------------------------------------- known keys
@lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every key of RecBole's and our property files, and the keys RecBole sets itself."""
    import recbole.utils.argument_list as args_list
    from recbole.utils import utils as recbole_utils

    from recbole_mamba.registry import properties_dir

    keys: set[str] = set()
    for name in dir(args_list):
        value = getattr(args_list, name)
        if name.endswith("_arguments") and isinstance(value, list):
            keys.update(value)
    roots = [Path(recbole_utils.__file__).resolve().parent.parent / "properties", properties_dir()]
    for root in roots:
        for path in root.rglob("*.yaml"):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(data, dict):
                keys.update(str(k) for k in data)
    keys.update({
        "model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device",
        "single_spec", "local_rank", "world_size", "nproc", "ip", "port", "offset", "gpu_id",
        "train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args", "data_path",
        "checkpoint_dir", "resume_from", "dataset_url", "dist_backend", "dist_timeout", "log_wandb", "wandb_project", "shuffle", "benchmark_filename",
        "neg_sampling", "eval_setting", "valid_metric", "state",
    })
    keys.update(CHECKS)  # every key whose value is checked, ours included (no YAML names some)
    return frozenset(keys)


def suggest(key: str, candidates: frozenset[str] | None = None) -> str | None:
    """The known key ``key`` is most likely a typo of, if any is close enough."""
    pool = sorted(candidates if candidates is not None else known_keys())
    lower = [k for k in pool if k.lower() == key.lower()]
    if lower:
        return lower[0]
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.85)
    return close[0] if close else None


# ----------------------------------------------------------------------------- checks
def _origin(config: Any, key: str) -> str:
    if key in getattr(config, "cmd_config_dict", {}):
        return f"--{key}"
    if key in getattr(config, "variable_config_dict", {}):
        return f"config_dict[{key!r}]"
    return key


def check_user_keys(config: Any) -> None:
    """Refuse keys given by the user that look like typos of known keys."""
    given = {**getattr(config, "file_config_dict", {}), **getattr(config, "variable_config_dict", {}),
             **getattr(config, "cmd_config_dict", {})}
    known = known_keys()
    for key in given:
        if key in known:
            continue
        near = suggest(key, known)
        if near is not None:
            raise ConfigError(f"unknown config key {_origin(config, key)}: did you mean {near!r}?")


def check_values(config: Any) -> None:
    """Type and range of every key in :data:`CHECKS` present in ``config.final_config_dict``."""
    from recbole_mamba.baselines import CAUSAL_BASELINES
    from recbole_mamba.registry import registered_models

    final = config.final_config_dict
    for key, (ok, accepted) in CHECKS.items():
        if key not in final and key not in REQUIRED:
            continue
        value = final.get(key)
        if value is None and key not in REQUIRED:
            continue  # RecBole's "~": the model's own default
        if not ok(value):
            raise ConfigError(f"{_origin(config, key)}={value!r}: {key} must be {accepted}")
    model = final.get("model")
    if model in set(registered_models()) | set(CAUSAL_BASELINES) and "loss_type" in final:
        if final["loss_type"] not in OUR_LOSSES:
            raise ConfigError(
                f"{_origin(config, 'loss_type')}={final['loss_type']!r}: {model} takes loss_type "
                + ", ".join(OUR_LOSSES)
            )


def _load_config_files(self: Any, file_list: list[str] | None) -> dict:
    """RecBole's ``Config._load_config_files`` with a one-line error per bad file."""
    merged: dict = {}
    for file in file_list or []:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            data = yaml.load(text, Loader=self.yaml_loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file} must hold 'key: value' lines, got a YAML {type(data).__name__}")
        merged.update(data)
    return merged


_ORIGINAL: dict[str, Any] = {}


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    _ORIGINAL["init"](self, *args, **kwargs)
    check_user_keys(self)
    check_values(self)


def install() -> None:
    """Patch RecBole's ``Config`` (idempotent)."""
    from recbole.config.configurator import Config

    if "init" in _ORIGINAL:
        return
    _ORIGINAL["init"] = Config.__init__
    Config.__init__ = _init
    Config._load_config_files = _load_config_files


__all__ = ["ConfigError", "CHECKS", "install", "known_keys", "suggest", "check_values", "check_user_keys"]
