"""The one dispatch point for the selective scan.

``selective_scan_fn`` has mamba-ssm's signature and semantics. Which implementation runs:

* ``auto`` (default): CUDA tensors use mamba-ssm's fused kernel when ``mamba_ssm`` imports,
  otherwise our Triton kernel (:mod:`recbole_mamba.ops.selective_scan_triton`; Triton ships with
  CUDA builds of torch), and the pure-torch reference only when neither is there; CPU tensors
  use the fused numba kernel (:mod:`recbole_mamba.ops.selective_scan_cpu`).
* ``mamba_ssm``, ``triton``, ``cpu``, ``reference``: forced, with a clear error when it cannot
  run here (``triton`` on CPU tensors only under Triton's interpreter, ``TRITON_INTERPRET=1``).

The backend is chosen per call from the tensors' device; the log says once per process which
backend runs.
"""

from __future__ import annotations

import functools
import logging

import torch

from recbole_mamba.ops.selective_scan_cpu import selective_scan_cpu
from recbole_mamba.ops.selective_scan_ref import selective_scan_ref
from recbole_mamba.ops.selective_scan_triton import interpreter_on, selective_scan_triton, triton_available

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "mamba_ssm", "triton", "cpu", "reference")
_announced: set[str] = set()


@functools.lru_cache(maxsize=1)
def mamba_ssm_scan():
    """mamba-ssm's ``selective_scan_fn``, or ``None`` when the package does not import.

    Guarded: on a CPU-only machine mamba-ssm is usually absent or fails to import
    (no ``selective_scan_cuda``), which is fine.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a broken CUDA build
        return None
    return selective_scan_fn


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend (``mamba_ssm``, ``cpu`` or ``reference``) for tensors on ``device``.

    Raises ``ValueError`` for an unknown name or a backend that cannot run on this device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown mamba_backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            if mamba_ssm_scan() is not None:
                return "mamba_ssm"
            return "triton" if triton_available() else "reference"
        return "cpu" if device.type == "cpu" else "reference"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "mamba_backend 'triton' was asked for but triton does not import; it ships with CUDA "
                "builds of torch (pip install triton), or use mamba_backend: auto."
            )
        if device.type != "cuda" and not interpreter_on():
            raise ValueError(
                f"mamba_backend 'triton' needs CUDA tensors; the input is on {device}. Use "
                "mamba_backend: auto (or cpu) on this machine; TRITON_INTERPRET=1 runs the Triton "
                "kernels in Triton's (slow) CPU interpreter, for testing."
            )
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise ValueError(
                "mamba_backend 'mamba_ssm' needs CUDA tensors (mamba-ssm has CUDA kernels only); "
                f"the input is on {device}. Use mamba_backend: auto (or cpu) on this machine."
            )
        if mamba_ssm_scan() is None:
            raise ValueError(
                "mamba_backend 'mamba_ssm' was asked for but mamba_ssm does not import. "
                "Install it with `pip install recbole-mamba[cuda]` on a machine with CUDA and nvcc, "
                "or use mamba_backend: auto."
            )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"mamba_backend 'cpu' needs CPU tensors; the input is on {device}.")
    return backend


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
