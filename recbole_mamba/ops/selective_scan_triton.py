"""Selective scan in Triton: forward and backward for any CUDA GPU, with no compiled extension.

mamba-ssm's CUDA kernels need nvcc and a matching toolkit to build from its sdist; Triton ships
with CUDA builds of torch, so this op needs nothing new. Same signature and semantics as
mamba-ssm's ``selective_scan_fn`` (and our CPU op):

* forward: one program per (batch element, block of ``BLOCK_D`` channels); the state
  (BLOCK_D, N) lives in registers in float32 and the loop over L is sequential:
  ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = <h_t, C_t> + D u_t``, ``out_t = y_t silu(z_t)``.
  Only the state at the start of every chunk of ``CHUNK`` steps is written out (checkpoints,
  O(B D N L / CHUNK) memory).
* backward: chunks in reverse; a chunk's states are recomputed from its checkpoint into a
  per-program scratch of CHUNK x N per channel, then a reverse scan carries dLoss/dh and
  produces the gradients of u, delta (through the softplus), A, B, C, D, z and delta_bias.
  B and C are shared by all channels: their gradients are summed over the channel block in the
  program and added across blocks atomically; A, D and delta_bias likewise across the batch.

Inputs may be float32, float16 or bfloat16; the state and every accumulation are float32.
Block sizes are fixed (no autotuning, so no tuning cost in a first epoch). Under Triton's
interpreter (``TRITON_INTERPRET=1``) the same kernels run on CPU tensors, which is how CI tests
them without a GPU.

Why not flash-linear-attention (fla-core) as a dependency: its Triton recurrences (GLA,
RetNet, Mamba-2-style SSD) have one decay per head or per key dimension shared across value
channels, not Mamba-1's input-dependent decay exp(dt[d] A[d, n]) per (channel, state) pair with
the D skip and the z gate, so none of its kernels computes this scan; and its causal conv1d is
not needed: the depthwise conv runs through torch's grouped ``conv1d`` (cuDNN on GPU).
"""

from __future__ import annotations

import os

import torch

from recbole_mamba.ops.profiling import profiled
from recbole_mamba.ops.selective_scan_ref import check_scan_inputs

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch; CPU-only installs may lack it
    triton = None
    tl = None

CHUNK = 64
BLOCK_D = 32


def triton_available() -> bool:
    """True when triton imports."""
    return triton is not None


def interpreter_on() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if triton is not None:

    @triton.jit
    def _softplus(x):
        return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))

    @triton.jit
    def _load_step(u_ptr, delta_ptr, B_ptr, row, bn_row, t, mask_d, mask_n, bias,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """Step t's inputs, in float32: u, the raw step (delta + bias), dt, B."""
        u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        raw = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias
        dt = raw
        if SOFTPLUS:
            dt = _softplus(raw)
        Bt = tl.load(B_ptr + bn_row + t, mask=mask_n, other=0.0).to(tl.float32)
        return u, raw, dt, Bt

    @triton.jit
    def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                         out_ptr, ckpt_ptr, last_ptr, dim, length, nstate, nchunks,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < dim
        mask_n = offs_n < nstate
        mask_dn = mask_d[:, None] & mask_n[None, :]
        A = tl.load(A_ptr + offs_d[:, None] * nstate + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        row = (b * dim + offs_d) * length  # (BLOCK_D,) start of each channel's sequence
        bn_row = (b * nstate + offs_n) * length
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for c in range(nchunks):
            ck = ((b * dim + offs_d[:, None]) * nchunks + c) * nstate + offs_n[None, :]
            tl.store(ckpt_ptr + ck, h, mask=mask_dn)
            t0 = c * CHUNK
            for i in range(tl.minimum(CHUNK, length - t0)):
                t = t0 + i
                u, raw, dt, Bt = _load_step(u_ptr, delta_ptr, B_ptr, row, bn_row, t, mask_d, mask_n,
                                            bias, HAS_BIAS, SOFTPLUS)
                Ct = tl.load(C_ptr + bn_row + t, mask=mask_n, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y = y + Dv * u
                if HAS_Z:
                    z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
                    y = y * z / (1.0 + tl.exp(-z))
                tl.store(out_ptr + row + t, y, mask=mask_d)
        tl.store(last_ptr + (b * dim + offs_d[:, None]) * nstate + offs_n[None, :], h, mask=mask_dn)

    @triton.jit
    def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                         ckpt_ptr, dout_ptr, dlast_ptr, scratch_ptr,
                         du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
                         dim, length, nstate, nchunks,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr, CHUNK: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < dim
        mask_n = offs_n < nstate
        mask_dn = mask_d[:, None] & mask_n[None, :]
        dn = offs_d[:, None] * nstate + offs_n[None, :]
        A = tl.load(A_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        row = (b * dim + offs_d) * length
        bn_row = (b * nstate + offs_n) * length
        # this program's scratch: CHUNK states (BLOCK_D, N) of one chunk, state before step t
        scratch = scratch_ptr + ((b * dim + offs_d[:, None]) * CHUNK) * nstate + offs_n[None, :]
        if HAS_DLAST:
            g = tl.load(dlast_ptr + (b * dim + offs_d[:, None]) * nstate + offs_n[None, :],
                        mask=mask_dn, other=0.0).to(tl.float32)
        else:
            g = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for cc in range(nchunks):
            c = nchunks - 1 - cc
            t0 = c * CHUNK
            steps = tl.minimum(CHUNK, length - t0)
            h = tl.load(ckpt_ptr + ((b * dim + offs_d[:, None]) * nchunks + c) * nstate + offs_n[None, :],
                        mask=mask_dn, other=0.0)
            for i in range(steps):  # recompute the chunk's states
                t = t0 + i
                tl.store(scratch + i * nstate, h, mask=mask_dn)
                u, raw, dt, Bt = _load_step(u_ptr, delta_ptr, B_ptr, row, bn_row, t, mask_d, mask_n,
                                            bias, HAS_BIAS, SOFTPLUS)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            for j in range(steps):  # reverse scan over the chunk
                i = steps - 1 - j
                t = t0 + i
                h_prev = tl.load(scratch + i * nstate, mask=mask_dn, other=0.0)
                u, raw, dt, Bt = _load_step(u_ptr, delta_ptr, B_ptr, row, bn_row, t, mask_d, mask_n,
                                            bias, HAS_BIAS, SOFTPLUS)
                Ct = tl.load(C_ptr + bn_row + t, mask=mask_n, other=0.0).to(tl.float32)
                dA = tl.exp(dt[:, None] * A)
                h_t = dA * h_prev + (dt * u)[:, None] * Bt[None, :]
                dy = tl.load(dout_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
                if HAS_Z:
                    y = tl.sum(h_t * Ct[None, :], axis=1)
                    if HAS_D:
                        y = y + Dv * u
                    z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
                    sz = 1.0 / (1.0 + tl.exp(-z))
                    tl.store(dz_ptr + row + t, dy * y * sz * (1.0 + z * (1.0 - sz)), mask=mask_d)
                    dy = dy * z * sz
                g = g + dy[:, None] * Ct[None, :]
                tl.atomic_add(dC_ptr + bn_row + t, tl.sum(tl.where(mask_dn, dy[:, None] * h_t, 0.0), axis=0),
                              mask=mask_n)
                du = tl.zeros([BLOCK_D], dtype=tl.float32)
                if HAS_D:
                    dD_acc += dy * u
                    du = dy * Dv
                gh = g * h_prev * dA
                gB = tl.sum(g * Bt[None, :], axis=1)
                ddt = tl.sum(gh * A, axis=1) + gB * u
                dA_acc += gh * dt[:, None]
                du += gB * dt
                tl.atomic_add(dB_ptr + bn_row + t, tl.sum(tl.where(mask_dn, g * (dt * u)[:, None], 0.0), axis=0),
                              mask=mask_n)
                g = g * dA
                if SOFTPLUS:
                    ddt = ddt / (1.0 + tl.exp(-raw))  # d softplus / dx = sigmoid(x)
                dbias_acc += ddt
                tl.store(du_ptr + row + t, du, mask=mask_d)
                tl.store(ddelta_ptr + row + t, ddt, mask=mask_d)
        tl.atomic_add(dA_ptr + dn, dA_acc, mask=mask_dn)
        if HAS_D:
            tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d)


_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def _check(u, delta, A, B, C, D, z, delta_bias) -> None:
    if triton is None:
        raise ValueError("mamba_backend 'triton' needs the triton package (it ships with CUDA builds "
                         "of torch; pip install triton)")
    if u.device.type != "cuda" and not interpreter_on():
        raise ValueError(f"mamba_backend 'triton' needs CUDA tensors; the input is on {u.device} "
                         "(set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)")
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    for name, t in {"u": u, "delta": delta, "B": B, "C": C, "z": z}.items():
        if t is not None and t.dtype not in _SUPPORTED:
            raise ValueError(f"selective_scan (triton backend): {name} has dtype {t.dtype}; float32, "
                             "float16 and bfloat16 are supported")


def _block_n(nstate: int) -> int:
    return max(2, triton.next_power_of_2(nstate))


class SelectiveScanTriton(torch.autograd.Function):
    """``torch.autograd.Function`` around the two Triton kernels."""

    @staticmethod
    @profiled("selective_scan_triton_fwd")
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        _check(u, delta, A, B, C, D, z, delta_bias)
        nb, nd, length = u.shape
        nstate = A.shape[1]
        u_, delta_, B_, C_ = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
        A_ = A.float().contiguous()
        z_ = z.contiguous() if z is not None else u_
        D_ = D.float().contiguous() if D is not None else A_
        bias_ = delta_bias.float().contiguous() if delta_bias is not None else A_
        nchunks = max(1, -(-length // chunk))
        out = torch.empty_like(u_)
        ckpt = torch.empty((nb, nd, nchunks, nstate), device=u.device, dtype=torch.float32)
        last = torch.zeros((nb, nd, nstate), device=u.device, dtype=torch.float32)
        grid = (nb, triton.cdiv(nd, BLOCK_D))
        if length > 0:
            _scan_fwd_kernel[grid](u_, delta_, A_, B_, C_, D_, z_, bias_, out, ckpt, last,
                                   nd, length, nstate, nchunks,
                                   HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                                   SOFTPLUS=bool(delta_softplus), CHUNK=chunk, BLOCK_D=BLOCK_D,
                                   BLOCK_N=_block_n(nstate))
        ctx.save_for_backward(u_, delta_, A, B_, C_, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
        if return_last_state:
            return out, last
        return out

    @staticmethod
    @profiled("selective_scan_triton_bwd")
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        nb, nd, length = u.shape
        nstate = A.shape[1]
        chunk = ctx.chunk
        dlast = rest[0] if rest and rest[0] is not None else None
        dev = u.device
        f32 = dict(device=dev, dtype=torch.float32)
        du = torch.zeros((nb, nd, length), **f32)
        ddelta = torch.zeros((nb, nd, length), **f32)
        dz = torch.zeros((nb, nd, length), **f32) if z is not None else du
        dA = torch.zeros((nd, nstate), **f32)
        dB = torch.zeros((nb, nstate, length), **f32)
        dC = torch.zeros((nb, nstate, length), **f32)
        dD = torch.zeros((nd,), **f32)
        dbias = torch.zeros((nd,), **f32)
        scratch = torch.empty((nb, nd, chunk, nstate), **f32)
        A_ = A.float().contiguous()
        if length > 0:
            grid = (nb, triton.cdiv(nd, BLOCK_D))
            _scan_bwd_kernel[grid](
                u, delta, A_, B, C, D.float().contiguous() if D is not None else A_,
                z.contiguous() if z is not None else u,
                delta_bias.float().contiguous() if delta_bias is not None else A_,
                ckpt, dout.contiguous(), dlast.float().contiguous() if dlast is not None else ckpt, scratch,
                du, ddelta, dA, dB, dC, dD, dz, dbias, nd, length, nstate, ckpt.shape[2],
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, HAS_DLAST=dlast is not None, CHUNK=chunk,
                BLOCK_D=BLOCK_D, BLOCK_N=_block_n(nstate))
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else None,
                dz.to(z.dtype) if z is not None else None,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None,
                None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk: int = CHUNK):
    """The Triton selective scan; mamba-ssm's signature (see the module docstring).

    u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,).
    Returns out (batch, dim, L) in u's dtype and, with ``return_last_state``, the float32 last
    state (batch, dim, N).
    """
    return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, chunk)
