"""One step of Mamba's causal depthwise convolution (inference): ``causal_conv1d_update``.

Same semantics as the causal-conv1d package's function of that name, which mamba-ssm's
``Mamba.step`` calls on CUDA::

    conv_state = roll(conv_state, -1); conv_state[..., -1] = x      (in place)
    out        = act(sum(conv_state * weight, -1) + bias)           act: SiLU or none

x (batch, dim), conv_state (batch, dim, width), weight (dim, width), bias (dim,) ->
out (batch, dim). With the cpu backend a numba kernel does the shift, the dot and the activation in one pass
over the state (the torch form is six operations and a copy of the state, per layer and event);
with any other backend, and whenever autograd must see the step, the torch form.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from recbole_mamba.ops.backend import resolve_backend
from recbole_mamba.ops.cpu_common import FASTMATH, as_numpy, check_shapes, exp_row, fusable_state, like, needs_grad


def causal_conv1d_update_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None, silu: bool = True) -> torch.Tensor:
    """Plain torch: conv_state (batch, dim, width) updated in place -> (batch, dim)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = torch.sum(conv_state * weight, dim=-1)
    if bias is not None:
        out = out + bias
    return F.silu(out) if silu else out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
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
            exp_row(like(-1.0, out), acc_row, neg, fast_exp)
            one = like(1.0, out)
            for d in range(nd):
                acc_row[d] = acc_row[d] / (one + neg[d])


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, silu: bool = True,
                         backend: str = "auto") -> torch.Tensor:
    """Dispatch: the numba kernel when ``backend`` resolves to ``cpu``
    (:func:`recbole_mamba.ops.backend.resolve_backend`) for a contiguous float32/float64 state
    and no gradient is needed, the torch form otherwise. Shapes as :func:`causal_conv1d_update_ref`."""
    dtype = conv_state.dtype
    chosen = resolve_backend(backend, conv_state.device)
    if chosen != "cpu" or needs_grad(x, conv_state, weight, bias) or not fusable_state(conv_state):
        return causal_conv1d_update_ref(x, conv_state, weight, bias, silu)
    nb, nd, width = conv_state.shape
    check_shapes("causal_conv1d_update", {"x": (x, (nb, nd)), "weight": (weight, (nd, width)),
                                          "bias": (bias, (nd,))},
                 f"conv_state is {tuple(conv_state.shape)}")

    out = torch.empty((nb, nd), dtype=dtype)
    _update(as_numpy(x, dtype), conv_state.numpy(), as_numpy(weight, dtype), as_numpy(bias, dtype, 1),
            bias is not None, bool(silu), dtype == torch.float32, out.numpy())
    return out.to(x.dtype)
