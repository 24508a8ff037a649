"""``python -m recbole_mamba.warmup``: compile the fused CPU kernels ahead of the first run.

numba compiles each kernel of :mod:`recbole_mamba.ops` on its first call in an installation and
keeps the machine code in its on-disk cache (``__pycache__`` beside the sources, or
``NUMBA_CACHE_DIR``); later processes load it in well under a second. The first compile is slow:
the selective scan's parallel forward and backward and the causal low-rank attention's take
about 100 s of CPU time in all per dtype on a 2-core machine, otherwise paid by the first
training run. This command pays it up front, the kernel groups compiled in parallel processes::

    python -m recbole_mamba.warmup                       # float32: what training and inference use
    python -m recbole_mamba.warmup --dtypes float32,float64 --jobs 2   # float64 too (gradcheck, the tests)

Each group runs the layers that call the kernels, in the forms the models call them (channels-last
training forward and backward, the online ``forward_with_state`` and ``step``), on a tiny batch,
so the compiled specialisations are the ones a run asks for.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import sys
import time

import torch

#: the kernel groups, each warmed in a process of its own: (name, what it compiles)
GROUPS = {
    "mamba-train": "selective scan forward + backward, causal conv1d forward + backward, dropout (a Mamba block in training)",
    "lsa-train": "causal low-rank attention forward + backward, dropout (MLSA4Rec's LSA layer in training)",
    "online": "the scan of forward_with_state, conv1d and state updates, the LSA step (init_state / update_state)",
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _mamba_block(dtype: torch.dtype):
    from recbole_mamba.layers import Mamba, MambaBlock

    torch.manual_seed(0)
    return MambaBlock(Mamba(16, d_state=8, d_conv=4, expand=2, backend="cpu"), 16, 0.2, 1e-12).to(dtype)


def _lsa(dtype: torch.dtype):
    from recbole_mamba.layers.lsa import LowRankSelfAttention

    torch.manual_seed(0)
    return LowRankSelfAttention(16, 2, 4, 0.2, 0.2, causal=True, backend="cpu").to(dtype)


def warm_group(group: str, dtype_name: str) -> float:
    """Run the layers of ``group`` once in ``dtype_name``; seconds taken (compile included)."""
    torch.set_num_threads(1)
    dtype = DTYPES[dtype_name]
    start = time.perf_counter()
    x = torch.randn(2, 12, 16, dtype=dtype)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    lengths = mask.sum(1)
    if group == "mamba-train":
        block = _mamba_block(dtype).train()
        block(x.clone().requires_grad_()).sum().backward()
        with torch.no_grad():
            block.eval()(x)
    elif group == "lsa-train":
        lsa = _lsa(dtype).train()
        lsa(x.clone().requires_grad_(), mask).sum().backward()
        with torch.no_grad():
            lsa.eval()(x, mask)
    elif group == "online":
        with torch.no_grad():
            for layer in (_mamba_block(dtype).eval(), _lsa(dtype).eval()):
                _, state = layer.forward_with_state(x, lengths, mask)
                layer.step(x[:, 0], state, lengths)
    else:
        raise ValueError(f"unknown kernel group {group!r}; known: {', '.join(GROUPS)}")
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recbole_mamba.warmup",
        description="Compile recbole-mamba's CPU kernels into numba's on-disk cache, so that the first "
                    "training or inference run does not pay the compile.")
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated: float32 (training, inference) and/or float64 (gradcheck, the tests)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated kernel groups: {', '.join(GROUPS)}")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes compiling at once (default: the CPU count)")
    return p


def _split(text: str, known, what: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in known]
    if not names or bad:
        parser.error(f"--{what}: {', '.join(bad) or 'empty'} not among {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dtypes = _split(args.dtypes, DTYPES, "dtypes", parser)
    groups = _split(args.groups, GROUPS, "groups", parser)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    from tqdm import tqdm

    tasks = [(g, d) for d in dtypes for g in groups]
    start = time.perf_counter()
    # spawn: a fresh interpreter per worker (no forked torch/numba thread pools)
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=min(args.jobs, len(tasks)), mp_context=context) as pool:
        running = {pool.submit(warm_group, g, d): (g, d) for g, d in tasks}
        with tqdm(total=len(tasks), desc="compiling CPU kernels", unit="group", file=sys.stderr) as bar:
            for done in futures.as_completed(running):
                group, dtype = running[done]
                try:
                    seconds = done.result()
                except Exception as exc:  # a kernel that does not compile here: say which, and why
                    print(f"recbole_mamba.warmup: kernel group {group} ({dtype}) failed: "
                          f"{type(exc).__name__}: {exc}", file=sys.stderr)
                    return 1
                bar.write(f"  {group} ({dtype}): {seconds:.1f} s  [{GROUPS[group]}]")
                bar.update()
    groups_text = f"{len(tasks)} kernel group" + ("s" if len(tasks) != 1 else "")
    print(f"CPU kernels ready in numba's cache ({groups_text}, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
