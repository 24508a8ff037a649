"""Validation and test metrics of a saved checkpoint, through RecBole's own evaluator.

    python -m recbole_mamba.evaluate --checkpoint saved/MambaRec-<date>.pth
    python -m recbole_mamba.evaluate --checkpoint 'saved/MambaRec-*.pth' --eval_filter_seen=True --results r.json

For a run stopped by hand or killed (its best checkpoint is always intact, written atomically),
and for reading one checkpoint under another evaluation protocol. The data set, its splits and
the model are rebuilt from the checkpoint's config, as RecBole's ``load_data_and_model`` does
(through the safe loader: nothing the file names runs), then ``Trainer.evaluate`` runs on the
validation and test loaders: the figures a finished ``run_recbole`` prints as ``best valid`` and
``test result`` for the same weights.

Only evaluation keys can be changed (``--key=value``, RecBole's form; :data:`EVAL_KEYS`): the
weights were trained for the checkpoint's data, model and split, so anything else stays as saved.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

import recbole_mamba  # noqa: F401  (compat fixes, model registration)
from recbole_mamba.cli import UsageError, check_device, config_flags, pick_checkpoint

#: The config keys ``evaluate`` lets a user change; every other key stays as the checkpoint saved it.
EVAL_KEYS = ("eval_filter_seen", "metrics", "topk", "valid_metric", "eval_batch_size", "eval_item_chunk",
             "metric_decimal_place", "data_path", "show_progress")

SPLITS = ("valid", "test")


class EvaluateError(UsageError):
    """A problem with the user's input: checkpoint, split names, config keys or values."""


def evaluate_checkpoint(checkpoint: str | Path, overrides: dict[str, Any] | None = None,
                        splits: tuple[str, ...] = SPLITS, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Metrics of ``checkpoint`` on each of ``splits`` (``valid``, ``test``): ``{split: {metric: value}}``,
    RecBole's ``Trainer.evaluate`` on the loaders ``load_data_and_model`` rebuilds, with the
    evaluation keys in ``overrides`` (a subset of :data:`EVAL_KEYS`) applied first."""
    from recbole.quick_start import load_data_and_model
    from recbole.utils import get_trainer

    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(EVAL_KEYS))
    if bad:
        raise EvaluateError(f"--{bad[0]}: evaluate changes only evaluation keys ({', '.join(EVAL_KEYS)}); "
                            "the weights were trained with the checkpoint's other settings")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise EvaluateError(f"--splits: {', '.join(unknown) or '(none)'}: choose from {', '.join(SPLITS)}")
    if isinstance(overrides.get("topk"), int):
        overrides["topk"] = [overrides["topk"]]  # as RecBole's Config does
    if isinstance(overrides.get("metrics"), str):
        overrides["metrics"] = [overrides["metrics"]]
    path = Path(checkpoint)
    if not path.is_file():
        raise EvaluateError(f"checkpoint {path} does not exist; train with run_recbole.py (saved: True)")
    overrides["device"] = torch.device(device)
    try:
        config, model, _, _, valid, test = load_data_and_model(str(path), config_overrides=overrides)
    except (ValueError, OSError, pickle.UnpicklingError) as exc:  # config checks, missing data, refused pickles
        raise EvaluateError(f"{path}: {exc}") from None
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    loaders = {"valid": valid, "test": test}
    return {split: {k: float(v) for k, v in trainer.evaluate(loaders[split], load_best_model=False,
                                                           show_progress=config["show_progress"]).items()}
            for split in splits}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mamba.evaluate",
        description="Validation and test metrics of a RecBole checkpoint, through RecBole's evaluator. "
                    "Evaluation keys can be changed RecBole's way: --eval_filter_seen=True, --topk=[5,10], "
                    f"... (any of {', '.join(EVAL_KEYS)}).",
    )
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a RecBole .pth file; with a glob (saved/MambaRec-*.pth) or several files, the newest")
    parser.add_argument("--splits", default="valid,test", help="comma-separated: valid, test (default both)")
    parser.add_argument("--results", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = config_flags(extra)
        check_device(args.device)
        checkpoint = pick_checkpoint(args.checkpoint, "evaluate")
        splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        results = evaluate_checkpoint(checkpoint, overrides, splits, args.device)
    except ValueError as exc:  # UsageError (EvaluateError), the config checks' ConfigError
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    for split, metrics in results.items():
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.results:
        Path(args.results).write_text(json.dumps({"checkpoint": str(checkpoint), **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
