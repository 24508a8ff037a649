"""The one dispatch point for the selective scan.

``selective_scan_fn`` has mamba-ssm's signature and semantics. Which implementation runs:

* ``auto`` (default): CUDA tensors use mamba-ssm's fused kernel when ``mamba_ssm`` imports,
  otherwise our Triton kernel (:mod:`recbole_mamba.ops.selective_scan_triton`; Triton ships with
  CUDA builds of torch), and the pure-torch reference only when neither is there; CPU tensors
  use the fused numba kernel (:mod:`recbole_mamba.ops.selective_scan_cpu`).
* ``mamba_ssm``, ``triton``, ``cpu``, ``reference``: forced, with a clear error when it cannot
  run here (``triton`` on CPU tensors only under Triton's interpreter, ``TRITON_INTERPRET=1``).

The backend is resolved per call from the tensors' device by
:func:`recbole_mamba.ops.backend.resolve_backend`, the decision every op shares; the log says
once per process which backend runs.
"""

from __future__ import annotations

import logging

import torch

from recbole_mamba.ops.backend import BACKENDS, mamba_ssm_scan, resolve_backend
from recbole_mamba.ops.selective_scan_cpu import selective_scan_cpu
from recbole_mamba.ops.selective_scan_ref import selective_scan_ref
from recbole_mamba.ops.selective_scan_triton import selective_scan_triton

__all__ = ["BACKENDS", "mamba_ssm_scan", "resolve_backend", "selective_scan_fn"]

logger = logging.getLogger(__name__)

_announced: set[str] = set()


def selective_scan_fn(
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
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba-ssm's signature.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,).
    Returns out (batch, dim, L) and, with ``return_last_state``, the final state (batch, dim, N).
    """
    chosen = resolve_backend(backend, u.device)
    if chosen not in _announced:
        _announced.add(chosen)
        logger.info("recbole_mamba: selective scan backend %r on %s", chosen, u.device.type)
    if chosen == "cpu":
        fn = selective_scan_cpu
    elif chosen == "mamba_ssm":
        fn = mamba_ssm_scan()
    elif chosen == "triton":
        fn = selective_scan_triton
    else:
        fn = selective_scan_ref
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
