"""Dropout for CPUs with a counter-based mask: no random stream, no stored mask.

::

    keep[i] = hash(seed, i) >= p * 2**64          (i: the element's flat index)
    out[i]  = x[i] * keep[i] / (1 - p)

Why our own: torch's CPU dropout draws its mask through ``bernoulli_``, which fills it from one
sequential Mersenne-Twister stream, so it cannot run in parallel or vectorised, and a
training step holds several dropouts (seven in MLSA4Rec; figures in docs/backends.md). Here the mask bit of element i is a
function of (seed, i) only (SplitMix64's finaliser of a Weyl sequence, as in counter-based
generators like Philox), so every element is independent work: one numba pass, parallel and
vectorised. Backward recomputes the mask from the seed instead of
keeping it (no (..., D) bool tensor per dropout saved for backward).

The seed is drawn from torch's default CPU generator on every call, so ``torch.manual_seed``
(RecBole's ``init_seed``) makes runs reproducible as with ``nn.Dropout``; the masks differ from
torch's own (another generator), their distribution does not: each element is kept
independently with probability 1 - p (exactly ``1 - floor(p * 2**64) / 2**64``).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from recbole_mamba.ops.cpu_common import FASTMATH, CPU_DTYPES, like
from recbole_mamba.ops.profiling import profiled

#: elements per parallel work item
BLOCK = 4096

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def keep_hash(seed, index):  # pragma: no cover - compiled
    """64 random bits for element ``index`` under ``seed`` (SplitMix64's output function)."""
    z = np.uint64(index) * _GOLDEN + seed
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _apply(x, out, seed, threshold, scale):  # pragma: no cover - compiled
    # x, out: 1-D, same length; out[i] = x[i] * scale where kept, else x[i] * 0
    n = x.size
    zero = like(0.0, x)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        # the block sliced first and indexed by the counter: indexed x[i] with i from lo, numba's
        # negative-index wrap-around makes each address data-dependent (gathers)
        xb = x[lo:hi]
        ob = out[lo:hi]
        for k in range(hi - lo):
            # x * 0, not 0, where dropped: NaN and inf stay NaN, as with torch's x * mask
            ob[k] = xb[k] * (scale if keep_hash(seed, lo + k) >= threshold else zero)


@njit(parallel=True, cache=True)
def _mask(n, seed, threshold, out):  # pragma: no cover - compiled
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        ob = out[lo:hi]
        for k in range(hi - lo):
            ob[k] = keep_hash(seed, lo + k) >= threshold


def threshold(p: float) -> np.uint64:
    """The hash value below which an element is dropped: ``floor(p * 2**64)``, 0 <= p < 1."""
    return np.uint64(min(int(p * 2.0**64), 2**64 - 1))


def draw_seed() -> np.uint64:
    """A fresh 63-bit seed from torch's default CPU generator (so ``torch.manual_seed`` fixes it)."""
    return np.uint64(int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)))


def _run(x: torch.Tensor, p: float, seed: np.uint64) -> torch.Tensor:
    flat = x.detach().contiguous().view(-1).numpy()
    out = np.empty_like(flat)
    if flat.size:
        _apply(flat, out, seed, threshold(p), flat.dtype.type(1.0 / (1.0 - p)))
    return torch.from_numpy(out).view(x.shape)


class DropoutCPU(torch.autograd.Function):
    """``torch.autograd.Function`` around :func:`_apply`; backward applies the same mask."""

    @staticmethod
    @profiled("dropout_cpu_fwd")
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _run(x, p, seed)

    @staticmethod
    @profiled("dropout_cpu_bwd")
    def backward(ctx, grad):
        return _run(grad, ctx.p, ctx.seed), None, None


def dropout_mask(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    """The keep mask (bool, ``shape``) that :func:`dropout_cpu` applies under ``seed``."""
    n = int(np.prod(shape)) if len(shape) else 1
    out = np.empty(n, dtype=np.bool_)
    if n:
        _mask(n, np.uint64(seed), threshold(p), out)
    return torch.from_numpy(out).view(shape)


def dropout_cpu(x: torch.Tensor, p: float, seed: int | None = None) -> torch.Tensor:
    """Training-mode dropout of a CPU float32/float64 tensor: x (any shape) -> same shape.

    Each element is zeroed with probability ``p`` (0 <= p < 1) and the rest scaled by
    1 / (1 - p); ``seed`` (default: drawn from torch's generator) fixes the mask, which
    :func:`dropout_mask` returns. Gradients flow to ``x`` through the same mask.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_cpu: p must be in [0, 1), got {p}")
    if x.device.type != "cpu" or x.dtype not in CPU_DTYPES:
        raise ValueError(f"dropout_cpu: needs a CPU float32/float64 tensor, got {x.dtype} on {x.device}")
    return DropoutCPU.apply(x, float(p), draw_seed() if seed is None else np.uint64(seed))
