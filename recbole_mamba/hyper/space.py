"""Search spaces as YAML files (``properties/hyper/<Model>.yaml``), validated, turned into Ray Tune.

One entry per RecBole config key, with exactly one distribution::

    learning_rate: {loguniform: [1.0e-4, 1.0e-2]}   # low > 0, low < high
    dropout_prob:  {uniform: [0.1, 0.5]}             # low < high
    num_layers:    {randint: [1, 4]}                 # integers, high exclusive (1, 2 or 3)
    hidden_size:   {choice: [32, 64, 128]}           # a non-empty list of values
    loss_type:     {grid: [CE, SS]}                  # every value, each in its own trial(s)

``grid`` keys multiply: each combination of their values runs ``--num-samples`` times (the other
keys sampled anew each time), as Ray Tune's ``grid_search``.

Keys are checked against the config keys that RecBole and this package know for the model
(RecBole's overall/model/dataset property files and ours), so a typo fails before any trial runs
instead of silently tuning nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


def known_config_keys(model: str) -> set[str]:
    """Every config key RecBole (overall, dataset, model properties) and our YAML files define
    for ``model``."""
    import recbole

    from recbole_mamba.registry import properties_dir

    keys: set[str] = set()
    root = Path(recbole.__file__).resolve().parent / "properties"
    files = [root / "overall.yaml", root / "model" / f"{model}.yaml", properties_dir() / "model" / f"{model}.yaml"]
    files += sorted((root / "dataset").glob("*.yaml")) + sorted((properties_dir() / "dataset").glob("*.yaml"))
    files += sorted((properties_dir() / "model").glob("*.yaml"))  # shared keys (train_mode, ...)
    for path in files:
        if path.is_file():
            loaded = yaml.safe_load(path.read_text()) or {}
            if isinstance(loaded, dict):
                keys.update(str(k) for k in loaded)
    return keys


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: bounds must be finite numbers, got {value!r}")
    return float(value)


def validate_entry(key: str, spec: Any, where: str) -> tuple[str, Any]:
    """One entry -> (distribution, arguments), or :class:`SpaceError`."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(
            f"{where}: {key!r} must map to exactly one distribution, e.g. "
            f"{{loguniform: [1.0e-4, 1.0e-2]}}; choose from {', '.join(DISTRIBUTIONS)}; got {spec!r}"
        )
    ((dist, args),) = spec.items()
    if dist not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: {key!r}: unknown distribution {dist!r}; choose from {', '.join(DISTRIBUTIONS)}")
    if dist in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {key!r}: {dist} needs a non-empty list of values, got {args!r}")
        return dist, list(args)
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(f"{where}: {key!r}: {dist} needs [low, high], got {args!r}")
    low, high = (_number(a, f"{where}: {key!r}") for a in args)
    if not low < high:
        raise SpaceError(f"{where}: {key!r}: {dist} needs low < high, got [{args[0]}, {args[1]}]")
    if dist == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {key!r}: loguniform needs low > 0, got {args[0]}")
    if dist == "randint":
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise SpaceError(f"{where}: {key!r}: randint needs integer bounds, got {args!r}")
        return dist, [int(args[0]), int(args[1])]
    return dist, [low, high]


def load_space(path: str | Path, model: str | None = None) -> dict[str, tuple[str, Any]]:
    """Read and validate a space file -> {key: (distribution, arguments)}.

    With ``model``, keys are also checked against the config keys known for that model.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: expected a mapping of config keys to distributions, got {type(raw).__name__}")
    space = {}
    known = known_config_keys(model) if model else None
    for key, spec in raw.items():
        if not isinstance(key, str):
            raise SpaceError(f"{path}: keys must be config names, got {key!r}")
        if known is not None and key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SpaceError(f"{path}: {key!r} is not a config key of {model} or RecBole.{hint}")
        space[key] = validate_entry(key, spec, str(path))
    return space


def to_tune(space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """{key: (distribution, arguments)} -> Ray Tune's ``param_space``."""
    from ray import tune

    out = {}
    for key, (dist, args) in space.items():
        if dist == "choice":
            out[key] = tune.choice(args)
        elif dist == "grid":
            out[key] = tune.grid_search(args)
        elif dist == "uniform":
            out[key] = tune.uniform(*args)
        elif dist == "loguniform":
            out[key] = tune.loguniform(*args)
        else:
            out[key] = tune.randint(*args)
    return out


def default_space_file(model: str) -> Path:
    """``properties/hyper/<model>.yaml``, with a clear error when we ship none."""
    from recbole_mamba.registry import properties_dir

    path = properties_dir() / "hyper" / f"{model}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (properties_dir() / "hyper").glob("*.yaml"))
        raise SpaceError(
            f"no search space shipped for {model} (we ship: {', '.join(shipped)}); "
            f"write one and pass --space FILE (format: see properties/hyper/MambaRec.yaml)"
        )
    return path
