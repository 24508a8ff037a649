"""Kernels: the selective scan, the one-step state update, the causal convolution (whole sequence and one step),
the causal low-rank attention (whole sequence and one event) and dropout (fused CPU, mamba-ssm and Triton on CUDA, plain
reference), and the one backend decision they share (:mod:`recbole_mamba.ops.backend`)."""

from recbole_mamba.ops.backend import BACKENDS, check_backend_name, resolve_backend, runs_cpu_kernels

from recbole_mamba.ops.causal_conv1d import causal_conv1d_silu, causal_conv1d_silu_ref
from recbole_mamba.ops.dropout_cpu import dropout_cpu, dropout_mask
from recbole_mamba.ops.causal_conv1d_update import causal_conv1d_update, causal_conv1d_update_ref
from recbole_mamba.ops.causal_lsa import causal_lsa, causal_lsa_ref
from recbole_mamba.ops.causal_lsa_step import causal_lsa_step, causal_lsa_step_ref
from recbole_mamba.ops.cpu_common import CPU_DTYPES
from recbole_mamba.ops.selective_scan import selective_scan_fn
from recbole_mamba.ops.selective_scan_cpu import selective_scan_cpu
from recbole_mamba.ops.selective_scan_ref import selective_scan_ref
from recbole_mamba.ops.selective_state_update import (
    selective_state_update,
    selective_state_update_cpu,
    selective_state_update_ref,
)

__all__ = ["causal_conv1d_silu", "causal_conv1d_silu_ref", "causal_conv1d_update", "causal_conv1d_update_ref", "dropout_cpu", "dropout_mask", "causal_lsa", "causal_lsa_ref", "causal_lsa_step", "causal_lsa_step_ref", "BACKENDS", "check_backend_name", "resolve_backend", "runs_cpu_kernels", "selective_scan_fn", "selective_scan_cpu", "CPU_DTYPES",
           "selective_scan_ref", "selective_state_update", "selective_state_update_cpu",
           "selective_state_update_ref"]
