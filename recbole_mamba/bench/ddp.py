"""Epoch time of one process with all the threads against RecBole's DDP with one thread per
process, on the same cores, in one run.

    python -m recbole_mamba.bench.ddp [--models MambaRec,SASRec] [--dataset ml-100k]
        [--procs 2] [--epochs 3] [--out results/ddp] [run_recbole.py flags ...]

For each model, two training runs of ``run_recbole.py`` on the same data and flags:

* ``1 x P``: one process, ``OMP_NUM_THREADS = NUMBA_NUM_THREADS = P``;
* ``P x 1``: ``--nproc=P`` (gloo on CPU), one thread per process.

Each run trains ``--epochs`` epochs without validation (``eval_step 0``: RecBole then saves
every epoch and tests the last model); the figure is the median of the epochs' training times
that RecBole logs (``epoch k training [time: ...s``), the first epoch left out (thread pools,
numba's on-disk cache, allocator warm-up). ``train_batch_size`` is the global batch in both
(RecBole divides it by the world size), so both runs do the same optimizer steps per epoch.
Printed per model: both medians, the ratio ``P x 1 / 1 x P`` (below 1: DDP is faster) and each
run's wall time; the table also goes to ``--out/ddp.md``, and each run's log beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recbole_mamba.bench.proc import child_env

ROOT = Path(__file__).resolve().parents[2]
EPOCH_TIME = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # RecBole's set_color codes, present when the log is coloured


def epoch_times(log: str) -> list[float]:
    """Training seconds per epoch, in epoch order, from a RecBole console log (str)."""
    times = {int(m.group(1)): float(m.group(2)) for m in EPOCH_TIME.finditer(ANSI.sub("", log))}
    return [times[k] for k in sorted(times)]


def steady_median(times: list[float]) -> float:
    """Median epoch time without the first epoch (its warm-up); needs at least two epochs."""
    if len(times) < 2:
        raise ValueError(f"need at least 2 logged epochs to leave the first out, got {len(times)}")
    return statistics.median(times[1:])


def run_training(model: str, dataset: str, threads: int, nproc: int, epochs: int,
                 extra: list[str], workdir: Path, log_path: Path, timeout: float) -> tuple[list[float], float]:
    """One ``run_recbole.py`` training run in the current folder (its ``dataset/`` and ``log/``),
    checkpoints under ``workdir``; (epoch training times, wall seconds). Its console output goes
    to ``log_path``; a failed run raises with the log's last lines."""
    env = child_env()
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(ROOT / "run_recbole.py"), f"--model={model}", f"--dataset={dataset}",
           f"--epochs={epochs}", "--eval_step=0", "--show_progress=False",
           f"--checkpoint_dir={workdir / 'saved'}", *extra]
    if nproc > 1:
        cmd.append(f"--nproc={nproc}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    log_path.write_text(" ".join(cmd) + "\n" + output)
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise RuntimeError(f"{model} with {nproc} process(es) x {threads} thread(s) failed "
                           f"(exit {proc.returncode}); log {log_path}:\n{tail}")
    return epoch_times(output), wall


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recbole_mamba.bench.ddp",
        description="Epoch time: one process x P threads against --nproc=P x 1 thread (gloo on CPU). "
                    "Arguments it does not know go to run_recbole.py (e.g. --train_batch_size=1024).")
    p.add_argument("--models", default="MambaRec,SASRec", help="comma-separated model names")
    p.add_argument("--dataset", default="ml-100k", help="a RecBole data set name (default: ml-100k, shipped)")
    p.add_argument("--procs", type=int, default=2, help="P: the processes of the DDP run and the threads "
                                                        "of the one-process run (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 2; the first is left out (default 3)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run (default 1800)")
    p.add_argument("--out", default="results/ddp", help="folder for ddp.md and the runs' logs")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.procs < 2:
        parser.error(f"--procs must be >= 2 (got {args.procs}): it is the DDP run's process count")
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (got {args.epochs}): the first epoch is left out")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        parser.error("--models is empty")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = args.procs
    rows = []
    print(f"{args.dataset}, {args.epochs} epochs per run, {os.cpu_count()} CPUs; 1 x {p} threads against "
          f"{p} processes x 1 thread", flush=True)
    for model in models:
        figures = {}
        for label, threads, nproc in ((f"1x{p}", p, 1), (f"{p}x1", 1, p)):
            with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
                times, wall = run_training(model, args.dataset, threads, nproc, args.epochs, extra,
                                           Path(tmp), out / f"{model}-{label}.log", args.timeout)
            figures[label] = (steady_median(times), wall, times)
            print(f"  {model} {label}: epochs {', '.join(f'{t:.2f}' for t in times)} s; "
                  f"median without the first {figures[label][0]:.2f} s; run {wall:.0f} s", flush=True)
        one, ddp = figures[f"1x{p}"][0], figures[f"{p}x1"][0]
        rows.append((model, one, ddp, ddp / one, figures[f"1x{p}"][1], figures[f"{p}x1"][1]))
    header = (f"| model | 1 x {p} threads: epoch | {p} x 1 thread (DDP, gloo): epoch | DDP / one process "
              f"| run wall 1 x {p} | run wall {p} x 1 |\n|---|---|---|---|---|---|\n")
    table = header + "".join(f"| {m} | {a:.2f} s | {b:.2f} s | {r:.2f}x | {wa:.0f} s | {wb:.0f} s |\n"
                             for m, a, b, r, wa, wb in rows)
    (out / "ddp.md").write_text(f"{args.dataset}, {args.epochs} epochs, extra flags: {' '.join(extra) or 'none'}\n\n"
                                + table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
