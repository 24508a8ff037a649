"""Efficiency against sequence length: training step time, inference time and peak memory per
model and length, with ratios to SASRec measured in the same run.

    python -m recbole_mamba.bench --models SASRec,MambaRec,MLSA4Rec,MoEMaTrRec \\
        --lengths 200,500,1000,2000,5000 [--batch-size 32] [--steps 5] [--device cpu|cuda] \\
        [--memory-limit-gib 16] [--rounds 1] --out results/bench

Every (model, length) runs in a fresh child process: two warm-up steps, then ``--steps`` timed
training steps (RecBole's ``calculate_loss`` on a batch of full-length sequences, CE over all
items at the last position, backward, Adam step; the batch through the model's RecBole
transform, as BERT4Rec's masking) and as many timed inference passes (``full_sort_predict``),
each reported as the median over its steps. Peak memory is the step's: on CPU the resident high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs`` once the model and batch exist) above the
resident size before the steps; on CUDA ``torch.cuda.max_memory_allocated``. A child that runs
out of memory (an allocation error, the ``--memory-limit-gib`` address-space cap, or the kernel's
OOM killer) is recorded as ``OOM``, and the benchmark goes on.

``--profile K`` also records one more training step under ``torch.profiler`` and prints the K
ops with the most self time (the fused kernels under their ``recbole_mamba::`` names,
:mod:`recbole_mamba.ops.profiling`): where a step's time goes. The profiler's own overhead falls
on the many small ops, so shares there are upper bounds; the timed figures are measured without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from recbole_mamba.bench.proc import child_env, status_bytes

#: untimed training steps before the timed ones (the first compiles kernels and allocates
#: optimizer state; the second still ran up to ~40% slower than later ones for MLSA4Rec on CPU)
WARMUP_STEPS = 2

COLUMNS = ["model", "length", "batch", "status", "train_step_s", "infer_s", "peak_mib",
           "train_vs_sasrec", "infer_vs_sasrec", "memory_vs_sasrec"]


def _cap_address_space(extra_gib: float) -> None:
    """Cap this process's address space at what it maps now plus ``extra_gib``.

    The cap is set after the imports and the model are in place, so that it bounds what the
    measured steps allocate (a model that does not fit fails as OOM) and not torch's own
    libraries, whose mapped size varies between machines."""
    import resource

    cap = status_bytes("VmSize") + int(extra_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def profile_step(step, top: int, cuda: bool = False) -> list[dict]:
    """Run ``step()`` once under ``torch.profiler``; the ``top`` ops by self time (device time on
    CUDA), each ``{"op", "self_s", "calls", "share"}`` (share of the summed self time of all ops),
    then one ``"other"`` row for the rest."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted(((getattr(e, attr), e.key, e.count) for e in prof.key_averages()), reverse=True)  # µs, name, calls
    total = sum(us for us, _, _ in ops) or 1.0
    rest = ops[top:]
    ops = ops[:top] + [(sum(us for us, _, _ in rest), "other", sum(calls for _, _, calls in rest))]
    return [{"op": name, "self_s": us / 1e6, "calls": calls, "share": us / total} for us, name, calls in ops]


def profile_markdown(model: str, length: int, rows: list[dict]) -> str:
    """One (model, length)'s profile as a markdown table."""
    lines = [f"{model}, L={length}: one training step under torch.profiler, ops by self time", "",
             "| op | self time (ms) | calls | share |", "|---|---|---|---|"]
    lines += [f"| `{r['op']}` | {r['self_s'] * 1e3:.1f} | {r['calls']} | {r['share']:.1%} |" for r in rows]
    return "\n".join(lines)


def _child(model: str, length: int, batch: int, steps: int, device: str,
           memory_limit_gib: float | None = None, profile: int = 0, keep_freed: bool = True) -> dict:
    """Child process: time and measure one (model, length); on CPU, ``memory_limit_gib`` caps
    what the steps may map beyond the built model; ``profile`` > 0 adds that many ops of a
    profiled extra step; ``keep_freed``: glibc keeps freed memory for reuse, as RecBole's trainer
    does on CPU (:mod:`recbole_mamba.allocator`)."""
    import torch

    from recbole_mamba.allocator import keep_freed_memory
    from recbole_mamba.bench.models import build_model_and_transform, random_sequences, training_batch

    net, transform = build_model_and_transform(model, length, device=device, train_mode="augment")
    net.train()
    seqs = random_sequences(net.n_items, batch, length + 1, seed=length).to(device)
    data = training_batch(net, transform, seqs)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    cuda = device.startswith("cuda")
    if memory_limit_gib and not cuda:
        _cap_address_space(memory_limit_gib)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train_step():
        optimizer.zero_grad()
        net.calculate_loss(data).backward()
        optimizer.step()

    def timed(fn) -> float:
        sync()
        tick = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - tick

    # the first warm-up step loads the compiled kernels and builds the optimizer state; the peak
    # is counted from after it, so that it covers what a step holds (the later warm-ups fill the
    # allocator's reuse: CUDA's caching allocator, or glibc's heap under keep_freed_memory)
    train_step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        if keep_freed:
            keep_freed_memory()
    for _ in range(WARMUP_STEPS - 1):
        train_step()
    train_s = statistics.median(timed(train_step) for _ in range(steps))
    net.eval()
    with torch.no_grad():
        net.full_sort_predict(data)
        infer_s = statistics.median(timed(lambda: net.full_sort_predict(data)) for _ in range(steps))
    peak = (torch.cuda.max_memory_allocated() if cuda else status_bytes("VmHWM")) - before
    result = {"train_step_s": train_s, "infer_s": infer_s, "peak_bytes": peak}
    if profile:
        net.train()
        result["profile"] = profile_step(train_step, profile, cuda)
    return result


def measure(model: str, length: int, batch: int, steps: int, device: str,
            memory_limit_gib: float | None, timeout: float | None, profile: int = 0,
            keep_freed: bool = True) -> dict:
    """One row, measured in a child process; OOM and other failures become the row's status."""
    spec = json.dumps({"model": model, "length": length, "batch": batch, "steps": steps, "device": device,
                       "memory_limit_gib": memory_limit_gib, "profile": profile, "keep_freed": keep_freed})
    row = {"model": model, "length": length, "batch": batch}
    try:
        run = subprocess.run([sys.executable, "-m", "recbole_mamba.bench.efficiency", "--child", spec],
                             capture_output=True, text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout ({timeout:.0f} s)"}
    lines = run.stdout.strip().splitlines()
    if run.returncode == 0 and lines:
        result = json.loads(lines[-1])
        # the resident size can end below where the steps started (the allocator gave pages back): 0
        return {**row, "status": "ok", "train_step_s": result["train_step_s"], "infer_s": result["infer_s"],
                "peak_mib": max(0.0, result["peak_bytes"] / 2**20), **({"profile": result["profile"]} if "profile" in result else {})}
    text = run.stderr + run.stdout
    oom = run.returncode in (-9, 137) or any(s in text for s in (
        "out of memory", "OutOfMemoryError", "MemoryError", "Cannot allocate memory", "std::bad_alloc",
        "DefaultCPUAllocator: can't allocate"))
    if oom:
        return {**row, "status": "OOM"}
    last = [l for l in text.strip().splitlines() if l.strip()]
    return {**row, "status": f"failed: {last[-1][:200] if last else run.returncode}"}


def load_rows(path: Path) -> list[dict]:
    """Rows of an ``efficiency.csv`` back as numbers (empty cells as None)."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {"model": raw["model"], "length": int(raw["length"]), "batch": int(raw["batch"]),
                   "status": raw["status"]}
            for key in COLUMNS[4:]:
                row[key] = float(raw[key]) if raw.get(key) else None
            rows.append(row)
    return rows


def add_ratios(rows: list[dict], baseline: str = "SASRec") -> None:
    """Ratios to the baseline model at the same length (where both ran)."""
    base = {r["length"]: r for r in rows if r["model"] == baseline and r["status"] == "ok"}
    for r in rows:
        b = base.get(r["length"])
        if r["status"] != "ok" or b is None:
            continue
        r["train_vs_sasrec"] = r["train_step_s"] / b["train_step_s"]
        r["infer_vs_sasrec"] = r["infer_s"] / b["infer_s"]
        r["memory_vs_sasrec"] = r["peak_mib"] / b["peak_mib"] if b["peak_mib"] > 0 else None


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per (model, length) from several rounds of the same rows: the median of each
    figure over the rounds where it ran, ratios included (each round's ratio is to SASRec of
    that round, so a slow spell of the machine shows in both and cancels). A (model, length)
    that failed in any round keeps that round's status and no figures."""
    combined = []
    for same in zip(*rounds):
        row = dict(same[0])
        failed = [r for r in same if r["status"] != "ok"]
        if failed:
            row = {k: failed[0].get(k) for k in ("model", "length", "batch", "status")}
        else:
            for key in COLUMNS[4:]:
                values = [r[key] for r in same if r.get(key) is not None]
                row[key] = statistics.median(values) if values else None
        row["rounds"] = len(same)
        combined.append(row)
    return combined


def _cell(r: dict, key: str, fmt: str) -> str:
    value = r.get(key)
    if value is None:
        return r["status"] if key == "train_step_s" and r["status"] != "ok" else "-"
    return format(value, fmt)


def markdown(rows: list[dict], device: str) -> str:
    mem = "peak GPU memory (MiB)" if device.startswith("cuda") else "peak RSS above start (MiB)"
    head = ["model", "L", "train step (s)", "inference (s)", mem, "train vs SASRec", "infer vs SASRec",
            "memory vs SASRec"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["length"]), _cell(r, "train_step_s", ".3f"), _cell(r, "infer_s", ".3f"),
            _cell(r, "peak_mib", ".0f"), _cell(r, "train_vs_sasrec", ".2f"), _cell(r, "infer_vs_sasrec", ".2f"),
            _cell(r, "memory_vs_sasrec", ".2f")]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, device: str, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    keys = [("train_step_s", "training step (s)"), ("infer_s", "inference (s)"),
            ("peak_mib", "peak memory (MiB)")]
    for ax, (key, label) in zip(axes, keys):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = [(r["length"], r[key]) for r in rows if r["model"] == model and r.get(key)]
            if pts:
                line, = ax.plot(*zip(*pts), marker="o", label=model)
                failed = [r["length"] for r in rows if r["model"] == model and r["status"] != "ok"]
                for x in failed:
                    ax.annotate("OOM" if any(r["status"] == "OOM" for r in rows if r["model"] == model and r["length"] == x) else "x",
                                (x, pts[-1][1]), color=line.get_color(), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lengths = sorted({r["length"] for r in rows})
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"batch {batch}, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(prog="python -m recbole_mamba.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="SASRec,MambaRec,MLSA4Rec,MoEMaTrRec",
                   help="comma-separated model names (ours or RecBole's); the first is the baseline of the ratios")
    p.add_argument("--lengths", default="200,500,1000,2000,5000",
                   help="comma-separated sequence lengths L (MAX_ITEM_LIST_LENGTH) to measure")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per training step and inference pass")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps (and inference passes) after two warm-up steps; the median is reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every (model, length) this many times, round by round, and report medians "
                        "(ratios per round first): steadier figures on a machine shared with other work")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--memory-limit-gib", type=float, default=16.0,
                   help="CPU: address space each child may map beyond its built model, so that a model that does not fit fails "
                        "cleanly as OOM instead of swapping the machine (0: none)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per (model, length)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also profile one training step per (model, length) and print its K ops with the most "
                        "self time (written to --out as profile.md)")
    p.add_argument("--system-malloc", action="store_true",
                   help="CPU: leave glibc's malloc as it is (by default every model runs with freed memory kept "
                        "for reuse, as RecBole's trainer does on CPU: recbole_mamba.allocator)")
    p.add_argument("--out", default=None, help="folder for efficiency.csv, efficiency.md, efficiency.png")
    p.add_argument("--replot", action="store_true",
                   help="redraw efficiency.md and efficiency.png from the --out folder's efficiency.csv")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        spec = json.loads(argv[1])
        print(json.dumps(_child(spec["model"], spec["length"], spec["batch"], spec["steps"], spec["device"],
                                spec.get("memory_limit_gib"), spec.get("profile", 0), spec.get("keep_freed", True))))
        return 0
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:
        if not args.out or not (Path(args.out) / "efficiency.csv").is_file():
            p.error("--replot needs --out DIR holding an efficiency.csv")
        rows = load_rows(Path(args.out) / "efficiency.csv")
        (Path(args.out) / "efficiency.md").write_text(
            f"batch {rows[0]['batch']}, {args.device}\n\n{markdown(rows, args.device)}\n")
        plot(rows, Path(args.out) / "efficiency.png", args.device, rows[0]["batch"])
        print(markdown(rows, args.device))
        return 0
    if args.rounds < 1 or args.steps < 1:
        p.error(f"--rounds and --steps must be at least 1 (got {args.rounds} and {args.steps})")
    if args.profile < 0:
        p.error(f"--profile must be 0 (off) or a number of ops (got {args.profile})")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    lengths = sorted(int(x) for x in args.lengths.split(","))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    if "SASRec" not in models:
        print("note: SASRec is not in --models, so no ratios are computed", file=sys.stderr)
    print(f"batch {args.batch_size}, device {args.device}, median of {args.steps} timed step(s), "
          f"{args.rounds} round(s)")
    rounds, profiles = [], []
    for r in range(args.rounds):
        rows = []
        for model in models:
            for length in lengths:
                row = measure(model, length, args.batch_size, args.steps, args.device,
                              args.memory_limit_gib or None, args.timeout, args.profile, not args.system_malloc)
                rows.append(row)
                tag = f"round {r + 1}: " if args.rounds > 1 else ""
                if row["status"] == "ok":
                    print(f"{tag}{model:>11} L={length:<5} train {row['train_step_s']:.3f} s  infer "
                          f"{row['infer_s']:.3f} s  peak {row['peak_mib']:.0f} MiB", flush=True)
                else:
                    print(f"{tag}{model:>11} L={length:<5} {row['status']}", flush=True)
                if row.get("profile"):
                    profiles.append(profile_markdown(model, length, row["profile"]))
                    print(f"\n{profiles[-1]}\n", flush=True)
        add_ratios(rows)
        rounds.append(rows)
    rows = combine_rounds(rounds)
    table = markdown(rows, args.device)
    print()
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "efficiency.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        (out / "efficiency.md").write_text(f"batch {args.batch_size}, {args.device}\n\n{table}\n")
        plot(rows, out / "efficiency.png", args.device, args.batch_size)
        if profiles:
            (out / "profile.md").write_text("\n\n".join(profiles) + "\n")
        print(f"wrote {out / 'efficiency.csv'}, {out / 'efficiency.md'}, {out / 'efficiency.png'}"
              + (f", {out / 'profile.md'}" if profiles else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
