"""Training benchmark: epoch time, peak memory and NDCG@10 per minute of training recipes, one run.

    python -m recbole_mamba.bench.training --model MambaRec --dataset ml-1m \\
        --variant "augmented: train_mode=augment dataset=recbole" \\
        --variant "all-positions: train_mode=all_positions" \\
        --set MAX_ITEM_LIST_LENGTH=200 --set loss_type=CE --set train_neg_sample_args=None \\
        --max-batches 30 [--minutes 10 --eval-every 60]

Each variant (``name: key=value ...``, RecBole config keys; ``dataset=recbole`` builds RecBole's
own materialising ``SequentialDataset`` instead of ours; ``model=NAME`` trains another model than
``--model``, e.g. SASRec with RecBole's augmentation against MambaRec on all positions) runs in a fresh child process so that
its peak resident memory (``VmHWM``: dataset, dataloader and training together) is its own.
A child builds the data (timed), then trains:

* ``--max-batches N``: N batches, and the epoch time is extrapolated to the whole epoch
  (``epoch s`` is marked ``~``); without it one full epoch is timed.
* ``--minutes M``: train for M minutes of training time (evaluation not counted), evaluating
  the validation NDCG@10 (RecBole's evaluator, the configured ranking) every ``--eval-every``
  seconds and at the end: the NDCG@10 reached per wall-clock minute of training, and the
  training time each variant needs to reach the first variant's best (its ratio to the time the
  first variant took to reach it).

Ratios are against the first variant. The training loop is RecBole's ``_train_epoch`` reduced
to what these models use (zero_grad, calculate_loss, backward, step), so that it can stop after
N batches or at a time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import yaml

from recbole_mamba.bench.proc import child_env, status_bytes


def _parse_value(text: str):
    value = yaml.safe_load(text)
    return None if value == "None" else value


def parse_assignments(items: list[str]) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML; ``None``/``~`` is None)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"name: k=v k2=v2"`` -> ``(name, {k: v, k2: v2})``."""
    name, _, rest = spec.partition(":")
    if not name.strip() or not rest.strip():
        raise ValueError(f"--variant must look like 'name: key=value ...', got {spec!r}")
    return name.strip(), parse_assignments(shlex.split(rest))


def run_child(args: dict) -> dict:
    """Build the data, train, and return the measurements (runs inside the child process)."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.dataset import SequentialDataset
    from recbole.utils import get_model, get_trainer, init_seed

    import recbole_mamba  # noqa: F401

    overrides = dict(args["overrides"])
    dataset_kind = overrides.pop("dataset", "ours")
    model_name = overrides.pop("model", args["model"])
    overrides.setdefault("show_progress", False)
    overrides.setdefault("metrics", ["Hit", "NDCG", "MRR"])
    overrides.setdefault("topk", [10])
    overrides.setdefault("valid_metric", "NDCG@10")
    overrides.setdefault("checkpoint_dir", args["checkpoint_dir"])
    t0 = time.perf_counter()
    config = Config(model=model_name, dataset=args["dataset"],
                    config_file_list=args["config_files"] or None, config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    dataset = SequentialDataset(config) if dataset_kind == "recbole" else create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    data_s = time.perf_counter() - t0
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    optimizer = trainer.optimizer
    n_batches = len(train_data)
    metric = config["valid_metric"].lower()

    def evaluate() -> float:
        return float(trainer.evaluate(valid_data, load_best_model=False, show_progress=False)[metric])

    curve, trained_s, done, epochs = [], 0.0, 0, 0
    budget_s = args["minutes"] * 60
    max_batches = args["max_batches"]
    next_eval = args["eval_every"]
    first_epoch_s = None
    while True:
        model.train()
        epoch_s = 0.0
        for batch in train_data:
            t = time.perf_counter()
            batch = batch.to(config["device"])
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            dt = time.perf_counter() - t
            trained_s += dt
            epoch_s += dt
            done += 1
            if budget_s and trained_s >= next_eval:
                curve.append((trained_s / 60, evaluate()))
                model.train()
                next_eval += args["eval_every"]
            if max_batches and done >= max_batches and first_epoch_s is None:
                first_epoch_s = epoch_s / done * n_batches
                if not budget_s:
                    break
            if budget_s and trained_s >= budget_s:
                break
        epochs += 1
        if first_epoch_s is None:
            first_epoch_s = epoch_s
        if not budget_s or trained_s >= budget_s:
            break
    if budget_s:
        curve.append((trained_s / 60, evaluate()))
    return {
        "rows": len(train_data.dataset), "batches": n_batches, "data_s": data_s,
        "epoch_s": first_epoch_s, "extrapolated": bool(max_batches and max_batches < n_batches),
        "peak_rss": status_bytes("VmHWM", default=0), "curve": curve, "metric": metric, "batches_trained": done,
    }


def reach_minute(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first training minute at which ``curve`` (``(minute, value)`` pairs) is >= ``target``."""
    return next((m for m, v in curve if v >= target), None)


def time_to_target_table(results: list[tuple[str, dict | None]]) -> str:
    """Markdown: how long each traced variant trains to reach the first variant's best value,
    and that time as a ratio to the first variant's own time to its best."""
    name0, base = results[0]
    target = max(value for _, value in base["curve"])
    minute0 = reach_minute(base["curve"], target)
    lines = [f"| variant | minutes to {name0}'s best {base['metric']} ({target:.4f}) | ratio |", "|---|---|---|"]
    for name, r in results:
        if not r or not r["curve"]:
            continue
        m = reach_minute(r["curve"], target)
        cell = f"{m:.1f} | {m / minute0:.2f}x" if m is not None else (
            f"not reached in {r['curve'][-1][0]:.1f} (best {max(v for _, v in r['curve']):.4f}) | -")
        lines.append(f"| {name} | {cell} |")
    return "\n".join(lines)


def _fmt_gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recbole_mamba.bench.training",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", action="append", required=True, help="'name: key=value ...' (repeat)")
    p.add_argument("--config-files", default="", help="comma-separated RecBole YAML files")
    p.add_argument("--set", action="append", default=[], help="key=value for every variant (repeat)")
    p.add_argument("--max-batches", type=int, default=0, help="time N batches and extrapolate the epoch")
    p.add_argument("--minutes", type=float, default=0.0, help="train this long and trace NDCG@10")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    p.add_argument("--checkpoint-dir", default="saved/bench")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(run_child(json.loads(a.child))), flush=True)
        return 0
    common = parse_assignments(a.set)
    variants = [parse_variant(v) for v in a.variant]
    files = [f for f in a.config_files.split(",") if f]
    print(f"{a.model} on {a.dataset}; common settings {common or '-'}; "
          f"{'first %d batches, epoch extrapolated' % a.max_batches if a.max_batches else 'one full epoch'}"
          f"{'; %.1f min of training traced' % a.minutes if a.minutes else ''}", flush=True)
    results = []
    for name, overrides in variants:
        child = {"model": a.model, "dataset": a.dataset, "config_files": files,
                 "overrides": {**common, **overrides}, "max_batches": a.max_batches,
                 "minutes": a.minutes, "eval_every": a.eval_every,
                 "checkpoint_dir": os.path.abspath(a.checkpoint_dir)}
        run = subprocess.run([sys.executable, "-m", "recbole_mamba.bench.training", "--model", a.model,
                              "--dataset", a.dataset, "--variant", "x: y=1", "--child", json.dumps(child)],
                             capture_output=True, text=True, env=child_env())
        line = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
        if run.returncode != 0 or not line:
            if run.returncode == -9:
                print(f"{name}: killed by SIGKILL: out of memory (the kernel's OOM killer)", flush=True)
            else:
                tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
                print(f"{name}: FAILED (exit {run.returncode}): " + " | ".join(tail), flush=True)
            results.append((name, None))
            continue
        results.append((name, json.loads(line[0][7:])))
        r = results[-1][1]
        print(f"{name}: {r['rows']:,} rows, {r['batches']} batches/epoch, data {r['data_s']:.1f} s, "
              f"epoch {'~' if r['extrapolated'] else ''}{r['epoch_s']:.1f} s, peak RSS {_fmt_gib(r['peak_rss'])} GiB",
              flush=True)
    base = next((r for _, r in results if r), None)
    print()
    print(f"| variant | rows/epoch | data build s | epoch s | epoch speed-up | peak RSS GiB | memory ratio | best {base['metric'] if base else 'metric'} (min) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results:
        if r is None:
            print(f"| {name} | failed (see above) | | | | | | |")
            continue
        best = max(r["curve"], key=lambda c: c[1]) if r["curve"] else None
        print(f"| {name} | {r['rows']:,} | {r['data_s']:.1f} | {'~' if r['extrapolated'] else ''}{r['epoch_s']:.1f} "
              f"| {base['epoch_s'] / r['epoch_s']:.2f}x | {_fmt_gib(r['peak_rss'])} | {r['peak_rss'] / base['peak_rss']:.2f} "
              f"| {f'{best[1]:.4f} ({best[0]:.1f})' if best else '-'} |")
    for name, r in results:
        if r and r["curve"]:
            trace = ", ".join(f"{m:.1f} min: {v:.4f}" for m, v in r["curve"])
            print(f"{name} {r['metric']} by training minute: {trace}")
    if base and base["curve"] and len(results) > 1:
        print()
        print(time_to_target_table(results))
    return 0 if all(r for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
