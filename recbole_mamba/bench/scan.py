"""Selective-scan benchmark: our fused CPU op against the pure-torch reference, same inputs.

    python -m recbole_mamba.bench.scan [--lengths 200,1000,2000] [--batch 64] [--dim 128]
                                       [--state 16] [--repeats 3] [--skip-reference-above 2000]
                                       [--layout layer|contiguous]
    python -m recbole_mamba.bench.scan --device cuda   # Triton vs mamba-ssm vs reference on a GPU,
                                                       # then a MambaRec training step per backend

Prints, per L: forward+backward time of each, the speed-up, throughput in B*L*D*N elements per
second, peak memory of one forward+backward of each and their ratio, and the max difference of
outputs and gradients (gradients relative to their largest value). The reference stores every
step for autograd and takes minutes at long L; ``--skip-reference-above`` leaves it out there
(and says so) to keep the run short.

``--layout layer`` (the default) hands the op u, delta, z and the output gradient as the Mamba
layer does on CPU: (B, D, L) transposed views of contiguous (B, L, D) tensors, which the kernels
read in place. ``--layout contiguous`` gives contiguous (B, D, L) tensors, mamba-ssm's layout,
which the CPU op copies to channels-last first (forward and backward).

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

from recbole_mamba.allocator import keep_freed_memory
from recbole_mamba.bench.proc import child_env, status_bytes
from recbole_mamba.ops import selective_scan_cpu, selective_scan_ref


def _seq(g: torch.Generator, batch: int, dim: int, length: int, layout: str) -> torch.Tensor:
    """A (batch, dim, L) standard-normal tensor in ``layout`` (see the module docstring)."""
    if layout == "layer":
        return torch.randn(batch, length, dim, generator=g).transpose(1, 2)
    return torch.randn(batch, dim, length, generator=g)


def _grad_out(batch: int, dim: int, length: int, layout: str) -> torch.Tensor:
    """The output gradient every run of one (batch, dim, L) shape gets, in ``layout``."""
    return _seq(torch.Generator().manual_seed(1), batch, dim, length, layout)


def _inputs(batch: int, dim: int, state: int, length: int, seed: int = 0,
            layout: str = "contiguous") -> list[torch.Tensor]:
    """u, delta, A, B, C, D, z, delta_bias for one scan; u, delta, z in ``layout``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return [
        _seq(g, batch, dim, length, layout), 0.5 * _seq(g, batch, dim, length, layout),
        -torch.rand(dim, state, generator=g) * 2 - 0.1, r(batch, state, length),
        r(batch, state, length), r(dim), _seq(g, batch, dim, length, layout), 0.3 * r(dim),
    ]


def _leaves(base: list[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh leaf copies of the inputs (same strides), which collect their gradients."""
    return [t.clone().requires_grad_() for t in base]


def _run(fn, base: list[torch.Tensor], grad_out: torch.Tensor, args=None):
    """One forward and backward of ``fn``; returns (out, input gradients)."""
    args = _leaves(base) if args is None else args
    out = fn(*args, delta_softplus=True)
    out.backward(grad_out)
    return out.detach(), [a.grad for a in args]


def _time(fn, base, grad_out, repeats: int):
    """Best forward+backward time over ``repeats`` runs (the op alone: the inputs' copies are
    made before the clock starts), and the last run's (out, grads)."""
    best = float("inf")
    for _ in range(repeats):
        args = _leaves(base)
        t0 = time.perf_counter()
        result = _run(fn, base, grad_out, args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def _measure_memory_child(op: str, batch: int, dim: int, state: int, length: int,
                          layout: str) -> None:
    """Child process: print the peak extra resident bytes of one forward+backward of ``op``."""
    fn = selective_scan_cpu if op == "ours" else selective_scan_ref
    _run(fn, _inputs(2, 4, state, 70), torch.ones(2, 4, 70))  # compile / warm up, tiny
    base = _inputs(batch, dim, state, length, layout=layout)
    grad_out = _grad_out(batch, dim, length, layout)
    args = _leaves(base)  # the inputs exist before the op: not counted
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    _run(fn, base, grad_out, args)
    print(json.dumps({"peak_extra_bytes": status_bytes("VmHWM") - before}))


def peak_memory(op: str, batch: int, dim: int, state: int, length: int,
                layout: str = "contiguous") -> int | None:
    """Peak extra resident bytes of one forward+backward of ``op`` ("ours" | "reference"),
    measured in a fresh process; ``None`` where /proc cannot be used (not Linux)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, "-m", "recbole_mamba.bench.scan", "--memory-child", op,
           "--batch", str(batch), "--dim", str(dim), "--state", str(state), "--lengths", str(length),
           "--layout", layout]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env())
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def _cuda_time(fn, base, grad_out, repeats: int) -> tuple[float, tuple]:
    """Best of ``repeats`` forward+backward times on CUDA (synchronised), and the last result."""
    result = _run(fn, base, grad_out)  # warm-up: Triton compiles on its first call
    best = float("inf")
    for _ in range(repeats):
        args = _leaves(base)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = _run(fn, base, grad_out, args)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def cuda_main(args) -> None:
    """``--device cuda``: Triton vs mamba-ssm vs the reference, and a MambaRec step per backend."""
    from recbole_mamba.ops.selective_scan import mamba_ssm_scan
    from recbole_mamba.ops.selective_scan_triton import selective_scan_triton

    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    ops = {"triton": selective_scan_triton, "reference": selective_scan_ref}
    if mamba_ssm_scan() is not None:
        ops["mamba_ssm"] = mamba_ssm_scan()
    else:
        print("mamba_ssm does not import here: its column is left out (pip install -e '.[cuda]')")
    print(f"{torch.cuda.get_device_name()} B={args.batch} D={args.dim} N={args.state}, forward+backward, float32")
    print(f"{'L':>6} " + " ".join(f"{name + ' ms':>14} {name + ' MiB':>14}" for name in ops)
          + f" {'triton/mamba_ssm':>16} {'ref/triton':>10} {'max|diff|':>10}")
    for length in (int(x) for x in args.lengths.split(",")):
        base = [t.cuda() for t in _inputs(args.batch, args.dim, args.state, length)]
        grad_out = torch.randn(args.batch, args.dim, length, device="cuda")
        times, mems, results = {}, {}, {}
        for name, fn in ops.items():
            if name == "reference" and length > args.skip_reference_above:
                continue
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            try:
                times[name], results[name] = _cuda_time(fn, base, grad_out, args.repeats)
            except torch.cuda.OutOfMemoryError:
                times[name] = None
                continue
            mems[name] = (torch.cuda.max_memory_allocated() - start) / 2**20
        cells = []
        for name in ops:
            t = times.get(name)
            cells.append(f"{t * 1e3:>14.2f} {mems[name]:>14.0f}" if t else f"{'OOM' if name in times else 'skipped':>14} {'-':>14}")
        ratio = f"{times['triton'] / times['mamba_ssm']:.2f}" if times.get("mamba_ssm") and times.get("triton") else "-"
        speed = f"{times['reference'] / times['triton']:.0f}x" if times.get("reference") and times.get("triton") else "-"
        diff = "-"
        if "reference" in results and "triton" in results:
            (oa, ga), (ob, gb) = results["triton"], results["reference"]
            diff = f"{max([(oa - ob).abs().max().item()] + [(x - y).abs().max().item() for x, y in zip(ga, gb)]):.2e}"
        print(f"{length:>6} " + " ".join(cells) + f" {ratio:>16} {speed:>10} {diff:>10}", flush=True)
    _cuda_model_steps(args, ["triton", "reference"] + (["mamba_ssm"] if "mamba_ssm" in ops else []))


def _cuda_model_steps(args, backends: list[str]) -> None:
    """A MambaRec training step (batch ``--batch``, shipped settings, CE) per backend on CUDA."""
    from recbole.data.interaction import Interaction

    from recbole_mamba.bench.models import build_model, random_sequences

    for length in (int(x) for x in args.lengths.split(",")):
        row = []
        for backend in backends:
            if backend == "reference" and length > args.skip_reference_above:
                row.append(f"{backend} skipped")
                continue
            net = build_model("MambaRec", length, device="cuda", mamba_backend=backend,
                              train_mode="augment").train()
            seqs = random_sequences(net.n_items, args.batch, length + 1).cuda()
            data = Interaction({net.ITEM_SEQ: seqs[:, :-1], net.POS_ITEM_ID: seqs[:, -1],
                                net.ITEM_SEQ_LEN: torch.full((args.batch,), length, device="cuda")})
            opt = torch.optim.Adam(net.parameters())
            best = float("inf")
            for i in range(args.repeats + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                opt.zero_grad()
                net.calculate_loss(data).backward()
                opt.step()
                torch.cuda.synchronize()
                if i:  # the first step compiles
                    best = min(best, time.perf_counter() - t0)
            row.append(f"{backend} {best * 1e3:.1f} ms")
        print(f"MambaRec training step, L={length}: " + ", ".join(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: our numba op vs the reference; cuda: Triton vs mamba-ssm vs the reference")
    p.add_argument("--lengths", default=None, help="default 200,1000,2000 (cpu), 200,1000,2000,5000 (cuda)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-reference-above", type=int, default=100000,
                   help="do not run the slow reference for L above this")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--layout", choices=("layer", "contiguous"), default="layer",
                   help="cpu: u, delta, z as the Mamba layer passes them (transposed views of "
                        "(B, L, D) tensors) or contiguous (B, D, L) (mamba-ssm's layout, copied first)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (by default the timings run with freed memory kept "
                        "for reuse, as RecBole's trainer does on CPU: recbole_mamba.allocator)")
    p.add_argument("--memory-child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.lengths is None:
        args.lengths = "200,1000,2000,5000" if args.device == "cuda" else "200,1000,2000"
    if args.device == "cuda":
        cuda_main(args)
        return
    if args.memory_child:
        _measure_memory_child(args.memory_child, args.batch, args.dim, args.state, int(args.lengths),
                              args.layout)
        return
    torch.manual_seed(0)
    print(f"B={args.batch} D={args.dim} N={args.state} threads={torch.get_num_threads()}, "
          f"forward+backward, float32, layout {args.layout}, "
          f"{'glibc malloc as it is' if args.system_malloc else 'freed memory kept for reuse'}")
    header = (f"{'L':>6} {'ours s':>8} {'ref s':>8} {'speedup':>8} {'ours elem/s':>12} "
              f"{'ours MiB':>9} {'ref MiB':>9} {'mem ratio':>9} {'max|diff|':>10}")
    print(header)
    # compile once, outside the timings
    warm = _inputs(2, 4, args.state, 70)
    _run(selective_scan_cpu, warm, torch.ones(2, 4, 70))
    if not args.system_malloc:
        keep_freed_memory()
    for length in (int(x) for x in args.lengths.split(",")):
        base = _inputs(args.batch, args.dim, args.state, length, layout=args.layout)
        grad_out = _grad_out(args.batch, args.dim, length, args.layout)
        ours_t, (out_a, grads_a) = _time(selective_scan_cpu, base, grad_out, args.repeats)
        elems = args.batch * length * args.dim * args.state
        run_ref = length <= args.skip_reference_above
        mem = lambda op: None if args.no_memory else peak_memory(  # noqa: E731
            op, args.batch, args.dim, args.state, length, args.layout)
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
