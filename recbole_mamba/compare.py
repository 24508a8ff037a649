"""Side by side with RecBole's baselines: every model under one split, metrics and budget.

    python -m recbole_mamba.compare --dataset ml-1m \\
        --models SASRec,GRU4Rec,BERT4Rec,LightSANs,MambaRec,MLSA4Rec,MoEMaTrRec \\
        [--config-files common.yaml] [--model-config BERT4Rec=bert.yaml] [--seeds 1,2,3] [--epochs N]
        --out results/ml-1m [--key=value ...]

Each (model, seed) is one RecBole run (``run_recbole``: RecBole's split, trainer, early stopping
and evaluation; the test metrics are those of the best validation checkpoint) in its own child
process, so that one model's crash or memory cannot touch another's and its peak memory is its
own. Per run, ``<out>/runs/<model>/seed<seed>/`` keeps ``run.log`` and, when it finished,
``result.json``; a finished run is never rerun (delete its folder to redo it), so an interrupted
comparison resumes where it stopped. A run that fails is reported in the table and the others go
on. With ``--address auto|ray://host:10001`` every (model, seed) is a task on a Ray cluster
instead (:func:`run_all_on_ray`; the same files come back). The outputs: ``results.csv`` (one row per run), ``results.md`` (mean +- std over seeds, best
per metric in bold, run time and peak memory) and ``results.png`` (the main metric with error
bars).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from recbole_mamba.bench.proc import child_env, status_bytes
from recbole_mamba.cli import config_flags, resolve_dataset


class CompareError(ValueError):
    """A bad command line, reported without a traceback."""


# --------------------------------------------------------------------------- one run (child)
def run_one(spec: dict) -> dict:
    """Child process: one RecBole run from ``spec``; returns the result dict."""
    import torch
    from recbole.quick_start import run_recbole

    import recbole_mamba  # noqa: F401

    run_dir = Path(spec["run_dir"])
    config_dict = {**spec["config"], "seed": spec["seed"], "checkpoint_dir": str(run_dir / "saved"),
                   "show_progress": False}
    sys.argv = sys.argv[:1]
    os.chdir(run_dir)
    start = time.time()
    result = run_recbole(model=spec["model"], dataset=spec["dataset"],
                         config_file_list=spec["config_files"] or None, config_dict=config_dict,
                         saved=True)
    wall = time.time() - start
    for ckpt in (run_dir / "saved").glob("*.pth"):  # the best model was only needed for the test
        if not spec.get("keep_checkpoints"):
            ckpt.unlink()
    peak_gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {
        "model": spec["model"], "seed": spec["seed"], "dataset": spec["dataset"],
        "run_s": round(wall, 2), "peak_rss_bytes": status_bytes("VmHWM", 0),
        "peak_gpu_bytes": peak_gpu,
        "best_valid_score": float(result["best_valid_score"]),
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "test": {k: float(v) for k, v in result["test_result"].items()},
    }


def _write_result(result: dict, run_dir: Path) -> None:
    """``run_dir/result.json``, always whole (a temporary and a rename): it marks the run as finished."""
    out = Path(run_dir) / "result.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def _child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    _write_result(run_one(spec), Path(spec["run_dir"]))
    return 0


# --------------------------------------------------------------------------- the comparison
def parse_passthrough(extra: list[str]) -> dict[str, Any]:
    """RecBole-style ``--key=value`` flags -> config dict (see :func:`recbole_mamba.cli.config_flags`)."""
    try:
        return config_flags(extra)
    except ValueError as exc:
        raise CompareError(str(exc)) from None


def _last_error(log: Path) -> str:
    """The last exception line of a run's log (what the table shows for a failed run)."""
    if not log.is_file():
        return "no log"
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or line.startswith("Killed"):
            return line[:300]
    return lines[-1][:300] if lines else "failed with no output"


def _prepare_run(out: Path, model: str, seed: int, dataset: str, files: list[str], config: dict,
                 keep_checkpoints: bool) -> tuple[Path, dict | None, dict | None]:
    """(run folder, its result when it finished before, None); otherwise (run folder, None, the
    run's spec), the spec also written to its ``spec.json``."""
    run_dir = out / "runs" / model / f"seed{seed}"
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return run_dir, json.loads(result_file.read_text()), None
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model": model, "seed": seed, "dataset": dataset, "config_files": files,
            "config": config, "run_dir": str(run_dir.resolve()), "keep_checkpoints": keep_checkpoints}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    return run_dir, None, spec


def _failure(model: str, seed: int, dataset: str, code: Any, timeout: float | None, run_dir: Path,
             start: float) -> dict:
    """The record of a run that wrote no result: why (timeout, killed, the log's last error)."""
    reason = f"timed out after {timeout:.0f} s" if code == "timeout" else (
        "killed (out of memory?)" if code in (-9, 137) else _last_error(run_dir / "run.log"))
    return {"model": model, "seed": seed, "dataset": dataset, "error": reason, "run_s": round(time.time() - start, 2)}


def run_all(models: list[str], seeds: list[int], dataset: str, config_files: list[str],
            config: dict, out: Path, timeout: float | None, keep_checkpoints: bool = False,
            echo=print, per_model: dict[str, list[str]] | None = None) -> list[dict]:
    """Run every (model, seed) that has no result yet; return one record per (model, seed).

    ``per_model`` adds config files for single models, after the common ``config_files``."""
    records = []
    total = len(models) * len(seeds)
    for n, (model, seed) in enumerate(((m, s) for m in models for s in seeds), start=1):
        label = f"[{n}/{total}] {model} seed {seed}"
        files = config_files + (per_model or {}).get(model, [])
        run_dir, kept, _ = _prepare_run(out, model, seed, dataset, files, config, keep_checkpoints)
        result_file, spec_file = run_dir / "result.json", run_dir / "spec.json"
        if kept is not None:
            echo(f"{label}: done before, kept ({result_file})")
            records.append(kept)
            continue
        echo(f"{label}: running (log: {run_dir / 'run.log'})")
        start = time.time()
        with open(run_dir / "run.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "recbole_mamba.compare", "--child", str(spec_file)],
                                    stdout=log, stderr=subprocess.STDOUT, env=child_env())
            progress = _Progress(run_dir / "run.log", label, echo)
            code = None
            while code is None:
                try:
                    code = proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    if timeout is not None and time.time() - start > timeout:
                        proc.kill()
                        proc.wait()
                        code = "timeout"
                progress.update()
        if result_file.is_file():
            record = json.loads(result_file.read_text())
            echo(f"{label}: finished in {record['run_s']:.0f} s, test {_brief(record['test'])}")
        else:
            record = _failure(model, seed, dataset, code, timeout, run_dir, start)
            echo(f"{label}: FAILED: {record['error']}")
        records.append(record)
    return records


# --------------------------------------------------------------------------- on a Ray cluster
def _run_on_worker(spec: dict, threads: int | None, timeout: float | None) -> dict:
    """A Ray task: one (model, seed) run as on one machine (a child process, :func:`run_one`), in
    a temporary folder of the worker; returns its log, result (None when it failed) and node, so
    the driver writes the same files a local run does."""
    import socket
    import tempfile

    import ray

    with tempfile.TemporaryDirectory(prefix="recbole-mamba-compare-") as tmp:
        spec = {**spec, "run_dir": tmp}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = child_env()
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        with open(Path(tmp) / "run.log", "w") as log:
            try:
                code = subprocess.run([sys.executable, "-m", "recbole_mamba.compare", "--child", str(spec_file)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        result_file = Path(tmp) / "result.json"
        return {"log": (Path(tmp) / "run.log").read_text(errors="replace"), "code": code,
                "result": json.loads(result_file.read_text()) if result_file.is_file() else None,
                "node": f"{socket.gethostname()} (node {ray.get_runtime_context().get_node_id()[:12]})"}


def run_all_on_ray(models: list[str], seeds: list[int], dataset: str, config_files: list[str],
                   config: dict, out: Path, timeout: float | None, keep_checkpoints: bool = False,
                   echo=print, per_model: dict[str, list[str]] | None = None, address: str | None = "auto",
                   cpus_per_run: float = 1, gpus_per_run: float = 0, max_retries: int = 3) -> list[dict]:
    """:func:`run_all` with every (model, seed) a Ray task on the cluster at ``address``
    (``auto``: the one this machine belongs to; ``ray://host:10001``: through Ray Client).

    Each task asks for ``cpus_per_run`` CPUs (its thread count) and ``gpus_per_run`` GPUs; Ray
    places the tasks and reruns one whose worker or node died, up to ``max_retries`` times. The
    data and the config files must be at the same paths on every node (a shared file system, or
    RecBole's bundled ml-100k). Logs and results come back to this machine and are written as a
    local run writes them: a finished run is never rerun, and the csv/md/png are the same files."""
    import ray

    from recbole_mamba.hyper.runner import init_ray

    if not ray.is_initialized():
        init_ray(address)
    task = ray.remote(_run_on_worker).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                                              max_retries=max_retries, retry_exceptions=False)
    order = [(m, s) for m in models for s in seeds]
    total = len(order)
    records: dict[tuple[str, int], dict] = {}
    pending: dict[Any, tuple[int, str, int, Path, float]] = {}
    for n, (model, seed) in enumerate(order, start=1):
        label = f"[{n}/{total}] {model} seed {seed}"
        files = config_files + (per_model or {}).get(model, [])
        run_dir, kept, spec = _prepare_run(out, model, seed, dataset, files, config, False)
        if kept is not None:
            echo(f"{label}: done before, kept ({run_dir / 'result.json'})")
            records[model, seed] = kept
            continue
        threads = max(1, int(cpus_per_run)) if cpus_per_run else None
        pending[task.remote(spec, threads, timeout)] = (n, model, seed, run_dir, time.time())
        echo(f"{label}: submitted to the Ray cluster")
    if keep_checkpoints:
        echo("compare: --keep-checkpoints is ignored on a Ray cluster (checkpoints stay on the workers' disks "
             "only for the run)")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        n, model, seed, run_dir, start = pending.pop(done[0])
        label = f"[{n}/{total}] {model} seed {seed}"
        try:
            reply = ray.get(done[0])
        except Exception as exc:  # the task was lost more often than max_retries
            record = {"model": model, "seed": seed, "dataset": dataset, "error": f"lost on the cluster: {exc!r}"[:300],
                      "run_s": round(time.time() - start, 2)}
            echo(f"{label}: FAILED: {record['error']}")
            records[model, seed] = record
            continue
        (run_dir / "run.log").write_text(reply["log"])
        if reply["result"] is not None:
            record = reply["result"]
            _write_result(record, run_dir)
            echo(f"{label}: finished on {reply['node']} in {record['run_s']:.0f} s, test {_brief(record['test'])}")
        else:
            record = _failure(model, seed, dataset, reply["code"], timeout, run_dir, start)
            echo(f"{label}: FAILED on {reply['node']}: {record['error']}")
        records[model, seed] = record
    return [records[key] for key in order]


class _Progress:
    """Echoes a run's progress from its RecBole log: each finished epoch with its validation score."""

    _EPOCHS = re.compile(r"^\s*epochs = (\d+)", re.M)
    _TRAIN = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([\d.naif-]+)\]")
    _VALID = re.compile(r"epoch (\d+) evaluating \[time: [\d.]+s, valid_score: ([\d.naif-]+)\]")

    def __init__(self, log: Path, label: str, echo) -> None:
        self.log, self.label, self.echo = log, label, echo
        self.total: str = "?"
        self.shown = -1

    def update(self) -> None:
        try:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
        except OSError:
            return
        if self.total == "?":
            m = self._EPOCHS.search(text)
            self.total = m.group(1) if m else "?"
        trains = {int(e): (secs, loss) for e, secs, loss in self._TRAIN.findall(text)}
        valid = {int(e): v for e, v in self._VALID.findall(text)}
        # an epoch is reported once its validation is logged (or, unvalidated, once the next starts)
        done = [e for e in trains if e in valid or e + 1 in trains]
        if not done or max(done) <= self.shown:
            return
        epoch = max(done)
        secs, loss = trains[epoch]
        score = f", valid score {valid[epoch]}" if epoch in valid else ""
        self.echo(f"{self.label}: epoch {epoch + 1}/{self.total} trained in {float(secs):.0f} s, "
                  f"train loss {loss}{score}")
        self.shown = epoch


def _brief(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_csv(records: list[dict], path: Path) -> list[str]:
    """One row per run; returns the metric names (test metrics, in RecBole's order)."""
    metrics = list(dict.fromkeys(k for r in records for k in r.get("test", {})))
    columns = ["model", "seed", "status"] + [f"test_{m}" for m in metrics] + \
              [f"valid_{m}" for m in metrics] + ["run_s", "peak_rss_mib", "peak_gpu_mib", "error"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row = {"model": r["model"], "seed": r["seed"], "status": "failed" if "error" in r else "ok",
                   "run_s": r.get("run_s"), "error": r.get("error", "")}
            for m in metrics:
                row[f"test_{m}"] = r.get("test", {}).get(m)
                row[f"valid_{m}"] = r.get("valid", {}).get(m)
            if r.get("peak_rss_bytes"):
                row["peak_rss_mib"] = round(r["peak_rss_bytes"] / 2**20)
            if r.get("peak_gpu_bytes"):
                row["peak_gpu_mib"] = round(r["peak_gpu_bytes"] / 2**20)
            writer.writerow(row)
    return metrics


def summarize(records: list[dict], models: list[str], metrics: list[str]) -> list[dict]:
    """Per model: mean and std of each test metric over its finished seeds."""
    rows = []
    for model in models:
        mine = [r for r in records if r["model"] == model]
        done = [r for r in mine if "error" not in r]
        row: dict[str, Any] = {"model": model, "seeds": len(done), "failed": len(mine) - len(done),
                               "errors": sorted({r["error"] for r in mine if "error" in r})}
        for m in metrics:
            values = [r["test"][m] for r in done if m in r["test"]]
            row[m] = _mean_std(values) if values else None
        if done:
            row["run_s"] = _mean_std([r["run_s"] for r in done])
            row["peak_rss_mib"] = max(r.get("peak_rss_bytes") or 0 for r in done) / 2**20
        rows.append(row)
    return rows


def write_markdown(summary: list[dict], metrics: list[str], path: Path, title: str) -> None:
    best = {}
    for m in metrics:
        values = [r[m][0] for r in summary if r.get(m)]
        if values:
            best[m] = max(values)
    head = ["model"] + metrics + ["seeds", "run time (s)", "peak RSS (MiB)"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["model"]]
        for m in metrics:
            if not r.get(m):
                cells.append("failed" if r["failed"] else "-")
                continue
            mean, std = r[m]
            text = f"{mean:.4f} ± {std:.4f}" if r["seeds"] > 1 else f"{mean:.4f}"
            cells.append(f"**{text}**" if abs(mean - best[m]) < 1e-12 else text)
        cells.append(f"{r['seeds']}" + (f" ({r['failed']} failed)" if r["failed"] else ""))
        cells.append(f"{r['run_s'][0]:.0f}" if r.get("run_s") else "-")
        cells.append(f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    failures = [(r["model"], e) for r in summary for e in r["errors"]]
    if failures:
        lines += ["", "Failed runs:"] + [f"- {m}: {e}" for m, e in failures]
    path.write_text("\n".join(lines) + "\n")


def write_plot(summary: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in summary if r.get(metric)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(summary) + 1), 3.6))
    if shown:
        x = range(len(shown))
        ax.errorbar(list(x), [r[metric][0] for r in shown], yerr=[r[metric][1] for r in shown],
                    fmt="o", capsize=4)
        ax.set_xticks(list(x), [r["model"] for r in shown], rotation=30, ha="right")
    failed = [r["model"] for r in summary if not r.get(metric)]
    if failed:
        ax.text(0.99, 0.02, "failed: " + ", ".join(failed), transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="crimson")
    ax.set_ylim(bottom=0)  # bar-free points: a zero baseline keeps the gaps in proportion
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main_metric(config_files: list[str], config: dict) -> str:
    """The configuration's valid_metric (later files and then flags win; RecBole's default
    MRR@10), lower-cased."""
    metric = None
    for f in config_files:
        loaded = yaml.safe_load(Path(f).read_text()) or {}
        metric = loaded.get("valid_metric", metric)
    return str(config.get("valid_metric", metric) or "MRR@10").lower()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recbole_mamba.compare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--models", required=True, help="comma-separated model names (ours and RecBole's)")
    p.add_argument("--config-files", default="", help="RecBole config files for every run (space- or comma-separated)")
    p.add_argument("--model-config", action="append", default=[], metavar="MODEL=FILE",
                   help="an extra config file for one model, after the common ones (repeatable); e.g. "
                        "a model that cannot use the common train_mode")
    p.add_argument("--seeds", default="2024", help="comma-separated seeds (default 2024)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs for every model (the same budget)")
    p.add_argument("--out", required=True, help="output folder (results.csv/md/png, runs/)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is stopped and reported")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's best RecBole checkpoint")
    p.add_argument("--address", default=None,
                   help="run every (model, seed) as a task on this Ray cluster: auto (the cluster this machine "
                        "belongs to) or ray://host:10001; default: one run after another on this machine")
    p.add_argument("--cpus-per-run", type=float, default=1, help="with --address: CPUs (threads) per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="with --address: GPUs per run (default 0)")
    p.add_argument("--max-retries", type=int, default=3,
                   help="with --address: reruns of a run whose worker or node died (default 3)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    if "--child" in argv:
        return _child_main(argv[argv.index("--child") + 1])
    args, extra = parser.parse_known_args(argv)
    try:
        from recbole_mamba.registry import get_model

        config = parse_passthrough(extra)
        if args.epochs is not None:
            if args.epochs < 1:
                raise CompareError("--epochs must be at least 1")
            config["epochs"] = args.epochs
        models = list(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
        if not models:
            raise CompareError("--models is empty")
        for m in models:
            get_model(m)  # unknown names fail now, with the list of models, not after hours of runs
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise CompareError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        files = [str(Path(f).resolve()) for f in args.config_files.replace(",", " ").split() if f]
        per_model: dict[str, list[str]] = {}
        for item in args.model_config:
            model, sep, path = item.partition("=")
            if not sep or model.strip() not in models:
                raise CompareError(f"--model-config must be MODEL=FILE with MODEL in --models, got {item!r}")
            per_model.setdefault(model.strip(), []).append(str(Path(path.strip()).resolve()))
        for f in files + [f for fs in per_model.values() for f in fs]:
            if not Path(f).is_file():
                raise CompareError(f"config file {f} does not exist")
        # runs happen in their own folders: the data folder must not be relative to here
        data_path = resolve_dataset(models[0], args.dataset, files, config).data_path
        if data_path:
            config["data_path"] = data_path
    except (CompareError, ValueError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.address:
        records = run_all_on_ray(models, seeds, args.dataset, files, config, out, args.timeout, args.keep_checkpoints,
                                 per_model=per_model, address=args.address, cpus_per_run=args.cpus_per_run,
                                 gpus_per_run=args.gpus_per_run, max_retries=args.max_retries)
    else:
        records = run_all(models, seeds, args.dataset, files, config, out, args.timeout, args.keep_checkpoints,
                          per_model=per_model)
    metrics = write_csv(records, out / "results.csv")
    summary = summarize(records, models, metrics)
    metric = main_metric(files, config)
    title = f"{args.dataset}: test metrics, {len(seeds)} seed(s)"
    write_markdown(summary, metrics, out / "results.md", title)
    write_plot(summary, metric if metric in metrics else (metrics[0] if metrics else metric),
               out / "results.png", title)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    failed = [r for r in records if "error" in r]
    if failed:
        print(f"compare: {len(failed)} of {len(records)} run(s) failed (see the table and each run's log)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
