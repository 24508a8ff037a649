"""One step of Mamba's causal depthwise convolution (inference): ``causal_conv1d_update``.

Same semantics as the causal-conv1d package's function of that name, which mamba-ssm's
``Mamba.step`` calls on CUDA::

    conv_state = roll(conv_state, -1); conv_state[..., -1] = x      (in place)
    out        = act(sum(conv_state * weight, -1) + bias)           act: SiLU or none

x (batch, dim), conv_state (batch, dim, width), weight (dim, width), bias (dim,) ->
out (batch, dim). On CPU a numba kernel does the shift, the dot and the activation in one pass
over the state (the torch form is six operations and a copy of the state, per layer and event);
elsewhere, and whenever autograd must see the step, the torch form.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from recbole_mamba.ops.selective_scan_cpu import _FASTMATH, _exp_row, _like, as_numpy, fusable_state, needs_grad


def causal_conv1d_update_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None, silu: bool = True) -> torch.Tensor:
    """Plain torch: conv_state (batch, dim, width) updated in place -> (batch, dim)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = torch.sum(conv_state * weight, dim=-1)
    if bias is not None:
        out = out + bias
    return F.silu(out) if silu else out


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _update(x, state, weight, bias, has_bias, silu, fast_exp, out):  # pragma: no cover - compiled
    nb, nd, width = state.shape
    for b in prange(nb):
        acc_row = out[b]
        for d in range(nd):
            row = state[b, d]
            w = weight[d]
            acc = bias[d] if has_bias else row[0] * 0
            for k in range(width - 1):
                row[k] = row[k + 1]
                acc += row[k] * w[k]
            row[width - 1] = x[b, d]
            acc += row[width - 1] * w[width - 1]
            acc_row[d] = acc
        if silu:
            # SiLU over the whole row at once, through the vectorised exp (a scalar libm exp
            # per channel was half of this kernel's time)
            neg = np.empty(nd, dtype=out.dtype)
            ibuf = np.empty(nd, dtype=np.int32)
            _exp_row(_like(-1.0, out), acc_row, neg, ibuf, ibuf.view(np.float32), fast_exp)
            one = _like(1.0, out)
            for d in range(nd):
                acc_row[d] = acc_row[d] / (one + neg[d])


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, silu: bool = True) -> torch.Tensor:
    """Dispatch: the numba kernel for a contiguous float32/float64 CPU state when no gradient
    is needed, the torch form otherwise. Shapes as :func:`causal_conv1d_update_ref`."""
    dtype = conv_state.dtype
    if needs_grad(x, conv_state, weight, bias) or not fusable_state(conv_state):
        return causal_conv1d_update_ref(x, conv_state, weight, bias, silu)
    nb, nd, width = conv_state.shape
    if x.shape != (nb, nd) or weight.shape != (nd, width) or (bias is not None and bias.shape != (nd,)):
        raise ValueError(
            f"causal_conv1d_update: conv_state {tuple(conv_state.shape)} needs x ({nb}, {nd}), weight "
            f"({nd}, {width}), bias ({nd},); got x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"bias {None if bias is None else tuple(bias.shape)}")

    out = torch.empty((nb, nd), dtype=dtype)
    _update(as_numpy(x, dtype), conv_state.numpy(), as_numpy(weight, dtype), as_numpy(bias, dtype, 1),
            bias is not None, bool(silu), dtype == torch.float32, out.numpy())
    return out.to(x.dtype)
