"""The one backend decision of every op in :mod:`recbole_mamba.ops`.

``mamba_backend`` (a model property; each layer's ``backend``) names one of :data:`BACKENDS`.
:func:`resolve_backend` turns it, for the device of an op's tensors, into the implementation that
runs, and every dispatcher (selective scan, one-step state update, causal conv1d whole-sequence
and one-step, causal low-rank attention whole-sequence and one-step, dropout) asks it and only it:

* ``cpu``: the fused numba kernels (CPU tensors only);
* ``mamba_ssm``: mamba-ssm's CUDA kernels for the scan and the state update (CUDA only, the
  package must import); the other ops run their plain torch form;
* ``triton``: our Triton scan (CUDA, or Triton's CPU interpreter with ``TRITON_INTERPRET=1``);
  the other ops run their plain torch form;
* ``reference``: plain torch everywhere, no custom kernel in any op (to rule a kernel out);
* ``auto``: ``cpu`` on CPU; on CUDA ``mamba_ssm`` where it imports, else ``triton``, else
  ``reference``.

A backend that cannot run on the tensors' device raises the same ``ValueError`` in every op.
"""

from __future__ import annotations

import functools

import torch

from recbole_mamba.ops.cpu_common import cpu_tensors
from recbole_mamba.ops.selective_scan_triton import interpreter_on, triton_available

BACKENDS = ("auto", "mamba_ssm", "triton", "cpu", "reference")


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


def check_backend_name(backend: str) -> str:
    """``backend`` itself when it is one of :data:`BACKENDS`; ``ValueError`` otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown mamba_backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend (``mamba_ssm``, ``triton``, ``cpu`` or ``reference``) for tensors on
    ``device``.

    Raises ``ValueError`` for an unknown name or a backend that cannot run on this device.
    """
    check_backend_name(backend)
    device = torch.device(device)
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


def runs_cpu_kernels(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Whether an op on ``tensors`` (``None`` skipped) runs its fused CPU kernel: ``backend``
    resolves to ``cpu`` on their device and they are CPU tensors of one dtype in
    :data:`recbole_mamba.ops.cpu_common.CPU_DTYPES`. Raises as :func:`resolve_backend` does."""
    first = next(t for t in tensors if t is not None)
    return resolve_backend(backend, first.device) == "cpu" and cpu_tensors(*tensors)
