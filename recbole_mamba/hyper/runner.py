"""``run_hyper.py``: a Ray Tune search over a RecBole model that early-stops per epoch.

    python run_hyper.py --model=MLSA4Rec --dataset=ml-100k [--space properties/hyper/MLSA4Rec.yaml]
        [--num-samples 20] [--max-epochs 30] [--scheduler asha|fifo] [--search random|optuna|hyperopt]
        [--cpus-per-trial N] [--gpus-per-trial F] [--address auto|ray://host:port]
        [--storage DIR] [--name NAME] [--resume] [--max-failures N] [--save-models] [--no-retrain]
        [--config_files "a.yaml b.yaml"] [--any_recbole_key=value ...]

Every trial is a RecBole training run with the base config (``--config_files`` and
``--key=value`` flags, as ``run_recbole.py`` takes them) updated by the sampled values; it
reports the validation metrics every epoch, so ASHA stops weak trials after a few epochs. At the
end, in ``<storage>/<name>/``: ``trials.csv`` and ``trials.md`` (every trial, sorted by the
validation metric), ``best_config.yaml`` (a ready RecBole config file), and ``best_test.json``
(the best config retrained from scratch, RecBole's test metrics).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from recbole_mamba.cli import config_flags, recbole_sees_no_flags, resolve_dataset

from recbole_mamba.hyper.space import SpaceError, default_space_file, load_space, to_tune
from recbole_mamba.hyper.trainable import attempts_file

log = logging.getLogger(__name__)


class HyperError(ValueError):
    """A bad command line or setup, reported without a traceback."""


def parse_passthrough(extra: list[str]) -> dict[str, Any]:
    """RecBole-style ``--key=value`` flags -> config dict (see :func:`recbole_mamba.cli.config_flags`)."""
    try:
        return config_flags(extra)
    except ValueError as exc:
        raise HyperError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_hyper.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", required=True, help="model name (ours or RecBole's)")
    p.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    p.add_argument("--space", default=None, help="search space YAML (default properties/hyper/<model>.yaml)")
    p.add_argument("--num-samples", type=int, default=20, help="trials to run (default 20)")
    p.add_argument("--max-epochs", type=int, default=30, help="epochs per trial at most (default 30)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    p.add_argument("--grace-period", type=int, default=2, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/factor per rung")
    p.add_argument("--search", choices=("random", "optuna", "hyperopt"), default="random")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: as resources allow)")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster: 'auto' (this node's) or ray://host:port; default: a local instance")
    p.add_argument("--storage", default="results/hyper", help="where trials, checkpoints and reports go")
    p.add_argument("--name", default=None, help="experiment name (default <model>-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment <storage>/<name>")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (from its last checkpoint)")
    p.add_argument("--save-models", action="store_true", help="save a RecBole checkpoint in each trial")
    p.add_argument("--no-retrain", action="store_true", help="skip retraining the best config for test metrics")
    p.add_argument("--seed", type=int, default=2024, help="search seed (the sampler's; RecBole's seed is a config key)")
    p.add_argument("--config_files", default=None, help="space-separated RecBole config files for every trial")
    return p


def _base_config(args: argparse.Namespace, passthrough: dict) -> tuple[list[str], dict, str]:
    """Absolute config files, the base config dict (absolute data_path), and the valid metric."""
    from recbole_mamba.registry import get_model

    get_model(args.model)  # unknown names fail here, with the list of models
    files = [str(Path(f).resolve()) for f in (args.config_files or "").split() if f]
    for f in files:
        if not Path(f).is_file():
            raise HyperError(f"config file {f} does not exist")
    base = {**passthrough, "epochs": args.max_epochs}
    try:
        resolved = resolve_dataset(args.model, args.dataset, files, base)
    except ValueError as exc:
        raise HyperError(str(exc)) from None
    if resolved.eval_step != 1:
        log.warning("eval_step is %s: trials report every %s epochs", resolved.eval_step, resolved.eval_step)
    if resolved.data_path:  # trials run in other directories
        base["data_path"] = resolved.data_path
    return files, base, resolved.valid_metric


def init_ray(address: str | None) -> None:
    """Connect to ``address`` (an existing cluster), or start a local Ray instance whose workers
    can import this package even from a source checkout (its folder goes on their PYTHONPATH)."""
    import ray

    runtime_env = None
    if address is None:
        package_root = str(Path(__file__).resolve().parents[2])
        paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
    ray.init(address=address, include_dashboard=False, configure_logging=False,
             log_to_driver=False, runtime_env=runtime_env)


def _search_alg(name: str, metric: str, mode: str, seed: int, max_concurrent: int):
    if name == "random":  # seeded, so that two runs (e.g. ASHA vs FIFO) sample the same configs
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            alg = OptunaSearch(metric=metric, mode=mode, seed=seed)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch

            alg = HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed)
    except (ImportError, AssertionError) as exc:
        raise HyperError(
            f"--search {name} needs the {name} package: pip install 'recbole-mamba[search]' "
            f"(or pip install {name}); ({exc})"
        ) from None
    if max_concurrent > 0:
        from ray.tune.search import ConcurrencyLimiter

        alg = ConcurrencyLimiter(alg, max_concurrent=max_concurrent)
    return alg


def _scheduler(args: argparse.Namespace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if args.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=args.max_epochs,
                         grace_period=max(1, min(args.grace_period, args.max_epochs)),
                         reduction_factor=args.reduction_factor)


def _trial_id_from_path(path: str | None) -> str:
    """``.../recbole_trainable_6d39d_00000_0_...`` -> ``6d39d_00000``."""
    parts = Path(path or "?").name.split("_")
    return "_".join(parts[2:4]) if len(parts) >= 4 else Path(path or "?").name


class Interrupted(Exception):
    """The search was stopped (Ctrl+C) before every trial finished."""


def unfinished_trials(folder: Path, num_samples: int) -> int:
    """How many of the ``num_samples`` trials the experiment saved in ``folder`` has not finished.

    Read from the state Tune saved on disk: after a Ctrl+C, the trials in the ``ResultGrid``
    that ``fit`` returns are all marked TERMINATED, while the saved state keeps the interrupted
    ones PENDING or RUNNING (which is what ``--resume`` restarts); trials the searcher had not
    yet created are missing from both."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(folder)).trials
    done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    return max(num_samples, len(trials)) - done


def trial_rows(results, metric: str, mode: str, max_epochs: int, params: list[str],
               experiment_dir: Path) -> list[dict]:
    """One row per trial, sorted by the best validation metric (errored trials last)."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df and len(df) else 0
        best = None
        if df is not None and metric in df and len(df):
            best = float(df[metric].max() if mode == "max" else df[metric].min())
        if result.error is not None:
            status = "error"
        elif epochs < max_epochs:
            status = f"stopped at epoch {epochs}"
        else:
            status = "completed"
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)
        starts = attempts_file(experiment_dir, trial_id)
        attempts = len(starts.read_text().split()) if starts.is_file() else 0
        row = {"trial": trial_id, "status": status,
               "epochs": epochs, "attempts": attempts, metric: best}
        row.update({p: (result.config or {}).get(p) for p in params})
        if result.error is not None:
            row["error"] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:200]}"
        rows.append(row)
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r[metric] is None, sign * (r[metric] if r[metric] is not None else 0.0)))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_tables(rows: list[dict], folder: Path, metric: str) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(folder / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        cells = [_fmt(row.get(c)) for c in columns]
        if i == 0 and row.get(metric) is not None:
            cells[columns.index(metric)] = f"**{cells[columns.index(metric)]}**"
        lines.append("| " + " | ".join(cells) + " |")
    (folder / "trials.md").write_text("\n".join(lines) + "\n")


def write_best_config(path: Path, files: list[str], base: dict, best: dict, args) -> dict:
    """A self-contained RecBole config: the config files, the flags and the best sampled values."""
    merged: dict[str, Any] = {}
    for f in files:
        merged.update(yaml.safe_load(Path(f).read_text()) or {})
    merged.update(base)
    merged.update(best)
    header = (f"# Best {args.model} config on {args.dataset} from run_hyper.py "
              f"({args.num_samples} trials, {args.scheduler}, {args.search}).\n"
              f"#   python run_recbole.py --model={args.model} --dataset={args.dataset} "
              f"--config_files={path}\n")
    path.write_text(header + yaml.safe_dump(_plain_dict(merged), sort_keys=True))
    return merged


def _plain_dict(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and math.isfinite(v):
            v = float(f"{v:.6g}")
        out[k] = v
    return out


def retrain(args, best_config: Path, folder: Path) -> dict:
    """The best config trained from scratch in this process; RecBole's test metrics."""
    from recbole.quick_start import run_recbole

    with recbole_sees_no_flags(folder):
        result = run_recbole(model=args.model, dataset=args.dataset,
                             config_file_list=[str(best_config)],
                             config_dict={"checkpoint_dir": str(folder / "saved"), "show_progress": False},
                             saved=args.save_models)
    return {k: {m: float(v) for m, v in result[k].items()} if isinstance(result[k], dict) else result[k]
            for k in ("best_valid_score", "best_valid_result", "test_result")}


def run(args: argparse.Namespace, passthrough: dict) -> dict:
    """The whole search; returns a summary dict (also written next to the tables)."""
    import ray
    from ray import tune

    from recbole_mamba.hyper.trainable import recbole_trainable

    if args.num_samples < 1 or args.max_epochs < 1:
        raise HyperError("--num-samples and --max-epochs must be at least 1")
    space_file = Path(args.space) if args.space else default_space_file(args.model)
    space = load_space(space_file, model=args.model)
    files, base, metric = _base_config(args, passthrough)
    mode = "max"  # RecBole's ranking metrics (valid_metric_bigger); error metrics: set valid_metric_bigger
    if passthrough.get("valid_metric_bigger") is False:
        mode = "min"
    storage = Path(args.storage).resolve()
    name = args.name or f"{args.model}-{args.dataset}"
    folder = storage / name
    if folder.exists() and not args.resume and any(folder.iterdir()):
        raise HyperError(f"{folder} already holds an experiment: pass --resume to continue it, "
                         "or choose another --name/--storage")
    if args.resume and not folder.exists():
        raise HyperError(f"--resume: no experiment at {folder}")

    if args.search != "random" and any(dist == "grid" for dist, _ in space.values()):
        raise HyperError(f"--search {args.search} cannot run grid keys ({', '.join(k for k, (d, _) in space.items() if d == 'grid')}); "
                         "use --search random, or 'choice' instead of 'grid'")
    # one checkpoint per epoch is the point here; Ray's warning about frequent snapshots is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        init_ray(args.address)
    trainable = tune.with_resources(
        tune.with_parameters(recbole_trainable, model=args.model, dataset=args.dataset,
                             config_files=files, base_config=base, save_model=args.save_models,
                             cpus=args.cpus_per_trial, experiment_dir=str(folder)),
        {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
    )
    start = time.time()
    if args.resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise HyperError(f"--resume: {folder} holds no restorable Tune experiment")
        tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_errored=True,
                                   param_space=to_tune(space))
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space),
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=args.num_samples,
                scheduler=_scheduler(args),
                search_alg=_search_alg(args.search, metric, mode, args.seed, args.max_concurrent),
                max_concurrent_trials=args.max_concurrent or None,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
    results = tuner.fit()
    wall = time.time() - start
    unfinished = unfinished_trials(folder, args.num_samples)
    if unfinished:
        # Ctrl+C (SIGINT) makes Tune save its state and return normally; tables written now
        # would call an interrupted trial "stopped early".
        raise Interrupted(f"search interrupted with {unfinished} of {args.num_samples} trial(s) unfinished; "
                          f"its state is saved in {folder}: run the same command with --resume to finish it")
    rows = trial_rows(results, metric, mode, args.max_epochs, list(space), folder)
    write_tables(rows, folder, metric)
    summary: dict[str, Any] = {
        "model": args.model, "dataset": args.dataset, "metric": metric, "scheduler": args.scheduler,
        "search": args.search, "trials": len(rows), "wall_s": round(wall, 1),
        "stopped_early": sum(r["status"].startswith("stopped") for r in rows),
        "errored": sum(r["status"] == "error" for r in rows),
        "epochs_trained": sum(r["epochs"] for r in rows),
    }
    good = [r for r in rows if r[metric] is not None]
    if good:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
        best_values = {k: best.config[k] for k in space}
        merged = write_best_config(folder / "best_config.yaml", files, base, best_values, args)
        summary["best_valid"] = good[0][metric]
        summary["best_config"] = _plain_dict({k: merged[k] for k in space})
        if not args.no_retrain:
            summary["retrained"] = retrain(args, folder / "best_config.yaml", folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)  # one line per '@' in a metric name
    try:
        passthrough = parse_passthrough(extra)
        summary = run(args, passthrough)
    except (HyperError, SpaceError) as exc:
        print(f"run_hyper: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"run_hyper: {exc}", file=sys.stderr)
        return 130
    folder = Path(args.storage).resolve() / (args.name or f"{args.model}-{args.dataset}")
    print((folder / "trials.md").read_text())
    print(f"{summary['trials']} trials in {summary['wall_s']} s; {summary['stopped_early']} stopped early, "
          f"{summary['errored']} errored; {summary['epochs_trained']} epochs trained in all")
    if "best_config" in summary:
        print(f"best {summary['metric']} (valid): {summary['best_valid']:.4f} with {summary['best_config']}")
        print(f"best config: {folder / 'best_config.yaml'}")
    if "retrained" in summary:
        print(f"retrained best config, test: {summary['retrained']['test_result']}")
    if summary["errored"] == summary["trials"]:
        print("run_hyper: every trial failed; see trials.md for the errors", file=sys.stderr)
        return 1
    return 0
