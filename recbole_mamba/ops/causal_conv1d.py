"""Mamba's causal depthwise convolution and SiLU over a whole sequence, channels-last, for CPUs.

::

    pre[b, t, c] = bias[c] + sum_k weight[c, k] * x[b, t - (K - 1) + k, c]     (x = 0 before t = 0)
    out          = silu(pre)

x (batch, L, dim) -> out (batch, L, dim); weight (dim, K), bias (dim,). This is ``conv1d(x^T,
groups=dim, padding=K-1)[..., :L]`` followed by SiLU, as :class:`recbole_mamba.layers.Mamba` runs
it, but on the channels-last layout that the layer's linear maps produce and that the CPU
selective scan reads.

Why our own kernel: torch's depthwise ``conv1d`` wants (batch, dim, L); around it the layer
transposed in_proj's output, and then the CPU scan (whose inner loops run over channels)
copied the conv output back to (batch, L, dim), in forward and again in backward. Here one
numba pass computes conv + SiLU in forward; backward recomputes ``pre`` (cheaper than keeping
it) and gives dx, dweight and dbias in one more pass. Every inner loop is a contiguous run
over the channels, so it vectorises. Work items are (batch row, block of ``TIME_BLOCK`` steps),
each with its own partial dweight/dbias that the wrapper sums.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from recbole_mamba.ops.backend import runs_cpu_kernels
from recbole_mamba.ops.cpu_common import FASTMATH, exp_row, like, as_numpy
from recbole_mamba.ops.profiling import profiled

TIME_BLOCK = 64
"""Steps per parallel work item."""


def causal_conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                           silu: bool = True) -> torch.Tensor:
    """Plain torch: x (batch, L, dim), weight (dim, K), bias (dim,) -> (batch, L, dim)."""
    length = x.shape[1]
    pre = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=weight.shape[1] - 1,
                   groups=weight.shape[0])[..., :length]
    return (F.silu(pre) if silu else pre).transpose(1, 2)


@njit(inline="always", fastmath=FASTMATH)
def _pre(x, wt, bias, has_bias, b, t, acc):  # pragma: no cover - compiled
    """acc[c] = bias[c] + sum_k wt[k, c] * x[b, t - (K-1) + k, c]."""
    width, nd = wt.shape
    zero = like(0.0, acc)
    for c in range(nd):
        acc[c] = bias[c] if has_bias else zero
    for k in range(width):
        s = t - (width - 1) + k
        if s >= 0:
            xr = x[b, s]
            wr = wt[k]
            for c in range(nd):
                acc[c] += wr[c] * xr[c]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _fwd(x, wt, bias, has_bias, silu, fast_exp, block, out):  # pragma: no cover - compiled
    nb, length, nd = x.shape
    nblocks = (length + block - 1) // block
    one = like(1.0, out)
    for item in prange(nb * nblocks):
        b = item // nblocks
        t0 = (item % nblocks) * block
        neg = np.empty(nd, dtype=out.dtype)
        for t in range(t0, min(length, t0 + block)):
            row = out[b, t]
            _pre(x, wt, bias, has_bias, b, t, row)
            if silu:
                exp_row(like(-1.0, out), row, neg, fast_exp)
                for c in range(nd):
                    row[c] = row[c] / (one + neg[c])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _bwd(x, wt, bias, has_bias, silu, fast_exp, block, dout, dx, dw_part, db_part):  # pragma: no cover
    # dpre[t] = dout[t] * silu'(pre[t]); dx[s] = sum_k wt[k] * dpre[s + K-1 - k];
    # dw[k] = sum_t dpre[t] * x[t - (K-1) + k]; db = sum_t dpre[t]
    nb, length, nd = x.shape
    width = wt.shape[0]
    nblocks = (length + block - 1) // block
    one = like(1.0, dout)
    for item in prange(nb * nblocks):
        b = item // nblocks
        t0 = (item % nblocks) * block
        t1 = min(length, t0 + block)
        # dpre of this block plus the K-1 steps after it (dx at the block's end needs them)
        t2 = min(length, t1 + width - 1)
        dpre = np.empty((t2 - t0, nd), dtype=dout.dtype)
        neg = np.empty(nd, dtype=dout.dtype)
        for t in range(t0, t2):
            row = dpre[t - t0]
            g = dout[b, t]
            if silu:
                _pre(x, wt, bias, has_bias, b, t, row)
                exp_row(like(-1.0, dout), row, neg, fast_exp)
                for c in range(nd):
                    sg = one / (one + neg[c])
                    row[c] = g[c] * sg * (one + row[c] * (one - sg))
            else:
                for c in range(nd):
                    row[c] = g[c]
        dw = dw_part[item]
        db = db_part[item]
        for t in range(t0, t1):
            row = dpre[t - t0]
            for c in range(nd):
                db[c] += row[c]
            for k in range(width):
                s = t - (width - 1) + k
                if s >= 0:
                    xr = x[b, s]
                    dwr = dw[k]
                    for c in range(nd):
                        dwr[c] += row[c] * xr[c]
        for s in range(t0, t1):
            acc = dx[b, s]
            for k in range(width):
                t = s + (width - 1) - k
                if t < t2:
                    wr = wt[k]
                    row = dpre[t - t0]
                    for c in range(nd):
                        acc[c] += wr[c] * row[c]


class CausalConv1dSiLUCPU(torch.autograd.Function):
    """``torch.autograd.Function`` around the numba kernels (see the module docstring)."""

    @staticmethod
    @profiled("causal_conv1d_silu_cpu_fwd")
    def forward(ctx, x, weight, bias, silu):
        dtype = x.dtype
        nb, length, nd = x.shape
        out = torch.empty((nb, length, nd), dtype=dtype)
        xn = as_numpy(x, dtype)
        if length > 0 and nb > 0:
            _fwd(xn, as_numpy(weight.t(), dtype, 2), as_numpy(bias, dtype, 1), bias is not None,
                 bool(silu), dtype == torch.float32, TIME_BLOCK, out.numpy())
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = bool(silu)
        return out

    @staticmethod
    @profiled("causal_conv1d_silu_cpu_bwd")
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dtype = x.dtype
        nb, length, nd = x.shape
        width = weight.shape[1]
        nitems = nb * (-(-length // TIME_BLOCK))
        dx = torch.zeros((nb, length, nd), dtype=dtype)
        dw_part = torch.zeros((max(nitems, 1), width, nd), dtype=dtype)
        db_part = torch.zeros((max(nitems, 1), nd), dtype=dtype)
        if nitems > 0:
            _bwd(as_numpy(x, dtype), as_numpy(weight.t(), dtype, 2), as_numpy(bias, dtype, 1),
                 bias is not None, ctx.silu, dtype == torch.float32, TIME_BLOCK,
                 as_numpy(dout, dtype), dx.numpy(), dw_part.numpy(), db_part.numpy())
        dweight = dw_part.sum(0).t().contiguous()
        dbias = db_part.sum(0) if bias is not None else None
        return dx, dweight, dbias, None


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       silu: bool = True, backend: str = "auto") -> torch.Tensor:
    """Causal depthwise conv (+ SiLU): x (batch, L, dim), weight (dim, K), bias (dim,) ->
    (batch, L, dim), differentiable in x, weight and bias.

    When ``backend`` resolves to ``cpu`` (:func:`recbole_mamba.ops.backend.resolve_backend`) and
    the tensors are float32/float64 of one dtype, the numba kernels run; otherwise
    :func:`causal_conv1d_silu_ref` (torch's conv1d).
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2] or (
            bias is not None and bias.shape != (x.shape[2],)):
        raise ValueError(
            f"causal_conv1d_silu: x must be (batch, L, dim) with weight (dim, K) and bias (dim,); got "
            f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"bias {None if bias is None else tuple(bias.shape)}")
    if runs_cpu_kernels(backend, x, weight, bias):
        return CausalConv1dSiLUCPU.apply(x, weight, bias, silu)
    return causal_conv1d_silu_ref(x, weight, bias, silu)
