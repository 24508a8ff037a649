"""One recurrent step of the selective SSM (inference): ``selective_state_update``.

Same signature and semantics as mamba-ssm's ``selective_state_update`` (its Triton kernel, which
``Mamba.step`` uses on CUDA): state (batch, dim, N) is updated in place and the output
(batch, dim) returned::

    dt    = softplus(dt + dt_bias)            (when dt_softplus)
    state = exp(dt * A) * state + dt * B * x
    out   = (<state, C> + D * x) * silu(z)

Backend ``cpu``: a fused numba kernel (one pass over the state, no temporaries: the plain torch
form allocates seven (batch, dim, N) tensors per step, which dominates an online update);
``mamba_ssm``: mamba-ssm's kernel; otherwise the plain torch form, which is also the reference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from recbole_mamba.ops.backend import resolve_backend
from recbole_mamba.ops.cpu_common import FASTMATH, as_numpy, exp_row, fusable_state, like, needs_grad


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Plain torch: state (b, d, N) in place; x, dt, z (b, d); A (d, N); B, C (b, N) -> (b, d)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    dA = torch.exp(dt.unsqueeze(-1) * A)
    dBx = (dt * x).unsqueeze(-1) * B.unsqueeze(1)
    state.copy_(state * dA + dBx)
    out = torch.einsum("bdn,bn->bd", state.to(C.dtype), C)
    if D is not None:
        out = out + D * x
    if z is not None:
        out = out * F.silu(z)
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _update(state, x, dt, A, Bm, Cm, Dv, gate, has_d, has_gate, fast_exp, out):  # pragma: no cover - compiled
    nb, nd, nstate = state.shape
    for b in prange(nb):
        da = np.empty(nstate, dtype=state.dtype)
        brow = Bm[b]
        crow = Cm[b]
        zero = like(0.0, A)
        for d in range(nd):
            step = dt[b, d]
            xt = x[b, d]
            dtx = step * xt
            exp_row(step, A[d], da, fast_exp)
            h = state[b, d]
            for n in range(nstate):
                h[n] = da[n] * h[n] + dtx * brow[n]
            y = zero
            for n in range(nstate):
                y += h[n] * crow[n]
            if has_d:
                y += Dv[d] * xt
            if has_gate:
                y *= gate[b, d]
            out[b, d] = y


def selective_state_update_cpu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """The fused CPU step (no autograd: inference only). ``state`` must be a contiguous float32
    or float64 CPU tensor; it is updated in place. Shapes as :func:`selective_state_update_ref`.

    The per-channel transcendentals (softplus of the step, SiLU of the gate) run in torch,
    vectorised, before the kernel: inside it they would be scalar libm calls (llvmlite has no
    vector math library), three per (row, channel) against one vectorised pass over the N
    state entries, and they took most of the step's time."""
    if not fusable_state(state):
        raise ValueError("selective_state_update_cpu: state must be a contiguous float32/float64 CPU tensor")
    nb, nd, nstate = state.shape
    if x.shape != (nb, nd) or dt.shape != (nb, nd) or A.shape != (nd, nstate) \
            or B.shape != (nb, nstate) or C.shape != (nb, nstate):
        raise ValueError(
            f"selective_state_update: state {tuple(state.shape)} needs x, dt ({nb}, {nd}), A ({nd}, {nstate}), "
            f"B, C ({nb}, {nstate}); got x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    dtype = state.dtype
    dt = dt.detach().to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.detach().to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    gate = F.silu(z.detach().to(dtype)) if z is not None else None
    out = torch.empty((nb, nd), dtype=dtype)
    _update(state.numpy(), as_numpy(x, dtype), as_numpy(dt, dtype), as_numpy(A, dtype),
            as_numpy(B, dtype), as_numpy(C, dtype), as_numpy(D, dtype, 1), as_numpy(gate, dtype, 2),
            D is not None, z is not None, dtype == torch.float32, out.numpy())
    return out.to(x.dtype)


@functools.lru_cache(maxsize=1)
def _mamba_ssm_state_update():
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception:  # absent, or a broken CUDA/Triton build
        return None
    return selective_state_update


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           backend: str = "auto"):
    """Dispatch on :func:`recbole_mamba.ops.backend.resolve_backend`: ``cpu`` runs the fused numba
    kernel (contiguous float32/float64 state), ``mamba_ssm`` mamba-ssm's kernel, ``triton`` and
    ``reference`` the plain torch form; so does any call autograd must see (the fused kernels
    are inference-only). Shapes as :func:`selective_state_update_ref`."""
    chosen = resolve_backend(backend, state.device)
    if needs_grad(x, dt, A, B, C, D, z, dt_bias):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if chosen == "cpu" and fusable_state(state):
        return selective_state_update_cpu(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if chosen == "mamba_ssm" and _mamba_ssm_state_update() is not None:
        return _mamba_ssm_state_update()(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
