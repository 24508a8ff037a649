"""Selective-scan benchmark: our fused CPU op against the pure-torch reference, same inputs.

    python -m recbole_mamba.bench.scan [--lengths 200,1000,2000] [--batch 64] [--dim 128]
                                       [--state 16] [--repeats 3] [--skip-reference-above 2000]

Prints, per L: forward+backward time of each, the speed-up, throughput in B*L*D*N elements per
second, peak memory of one forward+backward of each and their ratio, and the max difference of
outputs and gradients (gradients relative to their largest value). The reference stores every
step for autograd and takes minutes at long L; ``--skip-reference-above`` leaves it out there
(and says so) to keep the run short.

Peak memory is measured in a fresh child process per (op, L): inputs are created, the kernel
is compiled on a tiny input, the kernel's high-water mark of resident memory (``VmHWM``) is
reset through ``/proc/self/clear_refs``, one forward+backward runs, and the peak minus the
resident size before it is reported. Torch has no allocator statistics for CPU tensors, so the
operating system's count is the honest one; it includes the gradients (same for both ops).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from recbole_mamba.bench.proc import child_env, status_bytes
from recbole_mamba.ops import selective_scan_cpu, selective_scan_ref


def _inputs(batch: int, dim: int, state: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return [
        r(batch, dim, length), 0.5 * r(batch, dim, length),
        -torch.rand(dim, state, generator=g) * 2 - 0.1, r(batch, state, length),
        r(batch, state, length), r(dim), r(batch, dim, length), 0.3 * r(dim),
    ]


def _run(fn, base: list[torch.Tensor], grad_out: torch.Tensor):
    args = [t.clone().requires_grad_() for t in base]
    out = fn(*args, delta_softplus=True)
    (out * grad_out).sum().backward()
    return out.detach(), [a.grad for a in args]


def _time(fn, base, grad_out, repeats: int):
    """Best forward+backward time over ``repeats`` runs, and the last run's (out, grads)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = _run(fn, base, grad_out)
        best = min(best, time.perf_counter() - t0)
    return best, result


def _measure_memory_child(op: str, batch: int, dim: int, state: int, length: int) -> None:
    """Child process: print the peak extra resident bytes of one forward+backward of ``op``."""
    fn = selective_scan_cpu if op == "ours" else selective_scan_ref
    _run(fn, _inputs(2, 4, state, 70), torch.ones(2, 4, 70))  # compile / warm up, tiny
    base = _inputs(batch, dim, state, length)
    grad_out = torch.randn(batch, dim, length)
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    _run(fn, base, grad_out)
    print(json.dumps({"peak_extra_bytes": status_bytes("VmHWM") - before}))


def peak_memory(op: str, batch: int, dim: int, state: int, length: int) -> int | None:
    """Peak extra resident bytes of one forward+backward of ``op`` ("ours" | "reference"),
    measured in a fresh process; ``None`` where /proc cannot be used (not Linux)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, "-m", "recbole_mamba.bench.scan", "--memory-child", op,
           "--batch", str(batch), "--dim", str(dim), "--state", str(state), "--lengths", str(length)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env())
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="200,1000,2000")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-reference-above", type=int, default=100000,
                   help="do not run the slow reference for L above this")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--memory-child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        _measure_memory_child(args.memory_child, args.batch, args.dim, args.state, int(args.lengths))
        return
    torch.manual_seed(0)
    print(f"B={args.batch} D={args.dim} N={args.state} threads={torch.get_num_threads()}, "
          "forward+backward, float32")
    header = (f"{'L':>6} {'ours s':>8} {'ref s':>8} {'speedup':>8} {'ours elem/s':>12} "
              f"{'ours MiB':>9} {'ref MiB':>9} {'mem ratio':>9} {'max|diff|':>10}")
    print(header)
    # compile once, outside the timings
    warm = _inputs(2, 4, args.state, 70)
    _run(selective_scan_cpu, warm, torch.ones(2, 4, 70))
    for length in (int(x) for x in args.lengths.split(",")):
        base = _inputs(args.batch, args.dim, args.state, length)
        grad_out = torch.randn(args.batch, args.dim, length)
        ours_t, (out_a, grads_a) = _time(selective_scan_cpu, base, grad_out, args.repeats)
        elems = args.batch * length * args.dim * args.state
        run_ref = length <= args.skip_reference_above
        mem = lambda op: None if args.no_memory else peak_memory(  # noqa: E731
            op, args.batch, args.dim, args.state, length)
        ours_m = mem("ours")
        ref_m = mem("reference") if run_ref else None
        ratio = f"{ours_m / ref_m:.3f}" if ours_m is not None and ref_m else "-"
        mems = f"{_mib(ours_m):>9} {_mib(ref_m) if run_ref else 'skipped':>9} {ratio:>9}"
        if run_ref:
            ref_t, (out_b, grads_b) = _time(selective_scan_ref, base, grad_out, 1)
            diff = max([(out_a - out_b).abs().max().item()]
                       + [((ga - gb).abs().max() / gb.abs().max().clamp_min(1.0)).item()
                          for ga, gb in zip(grads_a, grads_b)])
            print(f"{length:>6} {ours_t:>8.3f} {ref_t:>8.2f} {ref_t / ours_t:>7.1f}x "
                  f"{elems / ours_t:>12.3e} {mems} {diff:>10.2e}", flush=True)
        else:
            print(f"{length:>6} {ours_t:>8.3f} {'skipped':>8} {'-':>8} {elems / ours_t:>12.3e} "
                  f"{mems} {'-':>10}", flush=True)


if __name__ == "__main__":
    main()
