"""Kernels: the selective scan (fused CPU, mamba-ssm on CUDA, plain reference) and its dispatch."""

from recbole_mamba.ops.selective_scan import BACKENDS, resolve_backend, selective_scan_fn
from recbole_mamba.ops.selective_scan_cpu import selective_scan_cpu
from recbole_mamba.ops.selective_scan_ref import selective_scan_ref

__all__ = ["BACKENDS", "resolve_backend", "selective_scan_fn", "selective_scan_cpu",
           "selective_scan_ref"]
