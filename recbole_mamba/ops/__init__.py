"""Kernels: the selective scan, the one-step state update, the causal convolution (whole sequence and one step),
the causal low-rank attention (whole sequence and one event) and dropout (fused CPU, mamba-ssm on CUDA, plain reference) and their dispatch."""

from recbole_mamba.ops.causal_conv1d import causal_conv1d_silu, causal_conv1d_silu_ref
from recbole_mamba.ops.dropout_cpu import dropout_cpu, dropout_mask
from recbole_mamba.ops.conv_update import causal_conv1d_update, causal_conv1d_update_ref
from recbole_mamba.ops.lsa_causal import causal_lsa
from recbole_mamba.ops.lsa_step import lsa_step, lsa_step_ref
from recbole_mamba.ops.selective_scan import BACKENDS, resolve_backend, selective_scan_fn
from recbole_mamba.ops.selective_scan_cpu import CPU_DTYPES, selective_scan_cpu
from recbole_mamba.ops.selective_scan_ref import selective_scan_ref
from recbole_mamba.ops.state_update import (
    selective_state_update,
    selective_state_update_cpu,
    selective_state_update_ref,
)

__all__ = ["causal_conv1d_silu", "causal_conv1d_silu_ref", "causal_conv1d_update", "causal_conv1d_update_ref", "dropout_cpu", "dropout_mask", "causal_lsa", "lsa_step", "lsa_step_ref", "BACKENDS", "resolve_backend", "selective_scan_fn", "selective_scan_cpu", "CPU_DTYPES",
           "selective_scan_ref", "selective_state_update", "selective_state_update_cpu",
           "selective_state_update_ref"]
