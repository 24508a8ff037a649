"""Plain PyTorch selective scan: the reference semantics of mamba-ssm's ``selective_scan_fn``.

A loop over L in Python that autograd differentiates step by step. Obviously correct and slow
(it stores every state for backward: O(B*D*L*N) memory); it is the ``reference`` backend and
the baseline of ``python -m recbole_mamba.bench.scan``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recbole_mamba.ops.cpu_common import check_shapes


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan, mamba-ssm semantics.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L); D, delta_bias: (dim,).
    With dt = softplus(delta + delta_bias) (softplus only if ``delta_softplus``):
    ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t``, ``y_t = <h_t, C_t> + D * u_t``,
    and ``out = y * silu(z)`` when z is given.

    Returns out (batch, dim, L) in u's dtype, and the last state (batch, dim, N) when
    ``return_last_state``. Computes in float32 (float64 for float64 inputs).
    """
    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    u = u.to(work)
    delta = delta.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(work)
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(work)
    B = B.to(work)
    C = C.to(work)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    x = u.new_zeros((batch, dim, dstate))
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.to(work)[:, None]
    if z is not None:
        out = out * F.silu(z.to(work))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """The scan's shape contract (every backend's): raise ``ValueError`` naming the first
    argument whose shape does not fit u (batch, dim, L) and A (dim, N)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    nb, nd, length = u.shape
    if A.dim() != 2 or A.shape[0] != nd:
        raise ValueError(f"selective_scan: A must be (dim={nd}, N), got {tuple(A.shape)}")
    nstate = A.shape[1]
    check_shapes("selective_scan", {
        "delta": (delta, (nb, nd, length)),
        "B": (B, (nb, nstate, length)),
        "C": (C, (nb, nstate, length)),
        "z": (z, (nb, nd, length)),
        "D": (D, (nd,)),
        "delta_bias": (delta_bias, (nd,)),
    }, f"u is {tuple(u.shape)}, A is {tuple(A.shape)}")
