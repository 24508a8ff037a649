"""Fused selective scan for CPUs: forward and backward as compiled loops (numba).

Why numba and not a C++ extension: numba compiles on first call from a wheel that pip installs
everywhere (no compiler, no torch headers, no build step that can fail on a fresh machine), its
``parallel=True`` + ``prange`` spreads (batch row, channel group) work items over all cores, and
``cache=True`` keeps the machine code on disk so the compile cost (tens of seconds per dtype for
the parallel forward and backward) is paid once per installation, not per run
(``python -m recbole_mamba.warmup`` pays it ahead). A C++ extension through ``torch.utils.cpp_extension`` would
need a compiler at import time on every user's machine.

Layout: the inner loops run over channels (d_inner, 128 for hidden 64), not over the state size
N. The wrapper hands the kernels u, delta, z as (B, L, D), A as (N, D), B and C as (B, L, N); a
work item keeps its states as (N, channels). Per step and state index, each loop is then one
long contiguous run over the channels (8 AVX-512 vectors at D=128), where the (batch, channel)
decomposition ran ~12 short loops over N per step whose set-up (trip counts, runtime alias
checks, remainders) cost more than their work at N=16-32, and whose fused backward loop (four
stores) LLVM left scalar. The sums over channels that dB and dC need become in-register
reductions (figures in docs/benchmarks.md).

Two rules keep those loops vectorised without gathers: a row of a 3-d array is sliced first
(``u[b, t, lo:lo + w]``) and indexed by the loop counter, since with ``u[b, t, lo + j]`` numba's
wrap-around of a possibly negative index made each address data-dependent; and the float32 exp
is :func:`~recbole_mamba.ops.cpu_common.exp32`, plain arithmetic that vectorises inside the
loop using it, so decay, state update and output are one pass over the channels.

Algorithm (per batch row b and channel group, in small thread-local buffers):

* forward: ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t``, ``y_t = <h_t, C_t> + D u_t``,
  ``out_t = y_t * silu(z_t)``. Only the state at the start of every chunk of ``CHUNK`` steps is
  kept for backward: O(B*D*N*L/CHUNK) memory instead of the O(B*D*L*N) that autograd over the
  reference loop stores.
* backward: chunks in reverse; each chunk's states and decays are recomputed from its
  checkpoint, then a reverse scan carries ``g = dLoss/dh_t`` and accumulates the gradients of u,
  delta (through the softplus), A, B, C, D, z and delta_bias. dB and dC are summed over the
  channels of a work item in registers, and over its channel groups by the wrapper.

Inputs: u, delta, z (B, D, L); A (D, N); B, C (B, N, L); D, delta_bias (D,), float32 or float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from recbole_mamba.ops.cpu_common import CPU_DTYPES, FASTMATH, as_numpy, exp32, like
from recbole_mamba.ops.profiling import profiled
from recbole_mamba.ops.selective_scan_ref import check_scan_inputs

CHUNK = 32
"""Steps between two saved states; backward recomputes the states of one chunk at a time."""

TINY = 2.0**-100
"""Where the backward scan's carried gradient dLoss/dh is set to 0 (about 7.9e-31). It decays by
exp(dt * A) at every step back from the last loss; where the loss sits at few positions (CE on a
sequence's last target, as RecBole's augmented training) it falls into float32's subnormal range
(below 1.2e-38), and so do its products with the states and step sizes. x86 arithmetic on
subnormals is microcoded, ~100x slower: the backward of a MambaRec step at L=200 took 2.8x
longer. 2**-100 leaves 26 binary orders of magnitude for those products before they turn subnormal;
a gradient part this small is below 1e-30 of the loss's scale, in float64 too. LLVM keeps the
flush vectorised (a compare and a select)."""

@njit(inline="always", fastmath=FASTMATH)
def _softplus_sigmoid_row(raw, out, sig, tmp, fast, softplus):  # pragma: no cover - compiled
    """For every i: out[i] = softplus(raw[i]) (or raw[i] when not ``softplus``) and
    sig[i] = sigmoid(raw[i]) (d softplus / d raw; 1 when not ``softplus``).

    For float32 both come from one vectorised exp: e = exp(-|r|) in (0, 1], softplus(r) =
    max(r, 0) + log1p(e) and sigmoid(r) = 1/(1 + e) for r >= 0, e/(1 + e) below. log1p(e) is
    2 atanh(e / (2 + e)) by its odd series up to s^13 (s <= 1/3: truncation error < 1e-8).
    Done per step over a run of channels ahead of the state loop, these replace three scalar
    libm calls per (row, channel, step), which were a third of the scan's time.
    """
    n = raw.shape[0]
    one = like(1.0, raw)
    zero = like(0.0, raw)
    if not softplus:
        for i in range(n):
            out[i] = raw[i]
            sig[i] = one
        return
    if not fast:
        for i in range(n):
            r = raw[i]
            out[i] = r if r > 20.0 else math.log1p(math.exp(r))
            sig[i] = one / (one + math.exp(-r))
        return
    for i in range(n):
        tmp[i] = exp32(-abs(raw[i]), raw)
    two = like(2.0, raw)
    k3 = like(1.0 / 3.0, raw)
    k5 = like(1.0 / 5.0, raw)
    k7 = like(1.0 / 7.0, raw)
    k9 = like(1.0 / 9.0, raw)
    k11 = like(1.0 / 11.0, raw)
    k13 = like(1.0 / 13.0, raw)
    for i in range(n):
        e = tmp[i]
        r = raw[i]
        s = e / (two + e)
        s2 = s * s
        log1p_e = two * s * (one + s2 * (k3 + s2 * (k5 + s2 * (k7 + s2 * (k9 + s2 * (k11 + s2 * k13))))))
        out[i] = (r if r > zero else zero) + log1p_e
        sig[i] = (one if r >= zero else e) / (one + e)


@njit(inline="always", fastmath=FASTMATH)
def _channel_range(bg, ngroups, nd):  # pragma: no cover - compiled
    """(batch row, group, first channel, channel count) of parallel work item ``bg``."""
    per_group = (nd + ngroups - 1) // ngroups
    b = bg // ngroups
    grp = bg % ngroups
    lo = min(nd, grp * per_group)
    return b, grp, lo, min(nd, lo + per_group) - lo


@njit(inline="always", fastmath=FASTMATH)
def _step_gates(delta, z, b, t, lo, bvec, has_z, softplus, fast, dts, sig, zsig, raw, tmp):  # pragma: no cover
    """Step t of row b for channels lo.. (vectors over the channels): dts = softplus(delta +
    bias), sig = its derivative, zsig = sigmoid(z)."""
    w = dts.shape[0]
    drow = delta[b, t, lo:lo + w]
    for j in range(w):
        raw[j] = drow[j] + bvec[j]
    _softplus_sigmoid_row(raw, dts, sig, tmp, fast, softplus)
    if has_z:
        _softplus_sigmoid_row(z[b, t, lo:lo + w], tmp, zsig, raw, fast, True)


@njit(inline="always")
def _vectors(w, count, dtype):  # pragma: no cover - compiled
    """``count`` scratch vectors of ``w`` channels, as one (count, w) array."""
    return np.empty((count, w), dtype=dtype)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _scan_fwd(u, delta, At, Bt, Ct, Dv, z, bias, has_d, has_z, has_bias, softplus, chunk, fast_exp,
              ngroups, out, ckpt, last):  # pragma: no cover - compiled
    # u, delta, z, out (B, L, D); At (N, D); Bt, Ct (B, L, N); ckpt (B, chunks, N, D); last (B, N, D)
    nb, length, nd = u.shape
    nstate = At.shape[0]
    for bg in prange(nb * ngroups):
        b, grp, lo, w = _channel_range(bg, ngroups, nd)
        if w <= 0:
            continue
        h = np.zeros((nstate, w), dtype=u.dtype)
        v = _vectors(w, 10, u.dtype)
        dts, sig, zsig, raw, tmp, da, dtu, y, dvec, bvec = (v[0], v[1], v[2], v[3], v[4], v[5],
                                                           v[6], v[7], v[8], v[9])
        zero = like(0.0, At)
        d_lo = Dv[lo:lo + w]
        bias_lo = bias[lo:lo + w]
        for j in range(w):
            dvec[j] = d_lo[j] if has_d else zero
            bvec[j] = bias_lo[j] if has_bias else zero
        for t in range(length):
            if t % chunk == 0:
                ck = ckpt[b, t // chunk]
                for n in range(nstate):
                    ck_row = ck[n, lo:lo + w]
                    for j in range(w):
                        ck_row[j] = h[n, j]
            _step_gates(delta, z, b, t, lo, bvec, has_z, softplus, fast_exp, dts, sig, zsig, raw,
                        tmp)
            u_t = u[b, t, lo:lo + w]
            for j in range(w):
                ut = u_t[j]
                dtu[j] = dts[j] * ut
                y[j] = dvec[j] * ut
            for n in range(nstate):
                bn = Bt[b, t, n]
                cn = Ct[b, t, n]
                hrow = h[n]
                a_row = At[n, lo:lo + w]
                if fast_exp:  # one loop: the decay stays in registers
                    for j in range(w):
                        hj = exp32(dts[j] * a_row[j], hrow) * hrow[j] + dtu[j] * bn
                        hrow[j] = hj
                        y[j] += hj * cn
                else:
                    for j in range(w):
                        hrow[j] = math.exp(dts[j] * a_row[j]) * hrow[j] + dtu[j] * bn
                    for j in range(w):
                        y[j] += hrow[j] * cn
            out_t = out[b, t, lo:lo + w]
            if has_z:
                z_t = z[b, t, lo:lo + w]
                for j in range(w):
                    out_t[j] = y[j] * z_t[j] * zsig[j]  # y * silu(z)
            else:
                for j in range(w):
                    out_t[j] = y[j]
        for n in range(nstate):
            last_row = last[b, n, lo:lo + w]
            for j in range(w):
                last_row[j] = h[n, j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _scan_bwd(u, delta, At, Bt, Ct, Dv, z, bias, has_d, has_z, has_bias, softplus, chunk, fast_exp,
              ngroups, ckpt, dout, dlast, has_dlast,
              du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part):  # pragma: no cover
    # as _scan_fwd; dout, du, ddelta, dz (B, L, D); dlast (B, N, D); dA_part (B, N, D);
    # dD_part, dbias_part (B, D); dB_part, dC_part (groups, B, L, N)
    nb, length, nd = u.shape
    nstate = At.shape[0]
    nchunks = ckpt.shape[1]
    for bg in prange(nb * ngroups):
        b, grp, lo, w = _channel_range(bg, ngroups, nd)
        if w <= 0:
            continue
        hs = np.empty((chunk + 1, nstate, w), dtype=u.dtype)   # states before/after each step
        das = np.empty((chunk, nstate, w), dtype=u.dtype)      # exp(dt * A) of each step
        gates = np.empty((3, chunk, w), dtype=u.dtype)         # dts, their sigmoid, sigmoid(z)
        ys = np.empty((chunk, w), dtype=u.dtype)               # y of each step (before the z gate)
        g = np.zeros((nstate, w), dtype=u.dtype)               # dLoss/dh carried backwards
        dA_acc = np.zeros((nstate, w), dtype=u.dtype)
        dD_acc = np.zeros(w, dtype=np.float64)                 # summed over all L steps
        dbias_acc = np.zeros(w, dtype=np.float64)
        v = _vectors(w, 8, u.dtype)
        raw, tmp, dtu, dy, sa, dub, dvec, bvec = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        zero = like(0.0, At)
        one = like(1.0, At)
        tiny = like(TINY, At)
        d_lo = Dv[lo:lo + w]
        bias_lo = bias[lo:lo + w]
        for j in range(w):
            dvec[j] = d_lo[j] if has_d else zero
            bvec[j] = bias_lo[j] if has_bias else zero
        if has_dlast:
            for n in range(nstate):
                dlast_row = dlast[b, n, lo:lo + w]
                for j in range(w):
                    g[n, j] = dlast_row[j]
        for c in range(nchunks - 1, -1, -1):
            t0 = c * chunk
            steps = min(length, t0 + chunk) - t0
            ck = ckpt[b, c]
            for n in range(nstate):
                ck_row = ck[n, lo:lo + w]
                for j in range(w):
                    hs[0, n, j] = ck_row[j]
            # recompute the chunk's states from its checkpoint
            for i in range(steps):
                t = t0 + i
                dts = gates[0, i]
                _step_gates(delta, z, b, t, lo, bvec, has_z, softplus, fast_exp, dts, gates[1, i],
                            gates[2, i], raw, tmp)
                u_t = u[b, t, lo:lo + w]
                y_i = ys[i]
                for j in range(w):
                    dtu[j] = dts[j] * u_t[j]
                    y_i[j] = dvec[j] * u_t[j]
                for n in range(nstate):
                    bn = Bt[b, t, n]
                    cn = Ct[b, t, n]
                    da_n = das[i, n]
                    h_prev = hs[i, n]
                    h_next = hs[i + 1, n]
                    a_row = At[n, lo:lo + w]
                    if fast_exp:  # one loop: decay, state and output (y is needed for dz)
                        for j in range(w):
                            d = exp32(dts[j] * a_row[j], da_n)
                            da_n[j] = d
                            hn = d * h_prev[j] + dtu[j] * bn
                            h_next[j] = hn
                            y_i[j] += hn * cn
                    else:
                        for j in range(w):
                            da_n[j] = math.exp(dts[j] * a_row[j])
                        for j in range(w):
                            h_next[j] = da_n[j] * h_prev[j] + dtu[j] * bn
                        for j in range(w):
                            y_i[j] += h_next[j] * cn
            # reverse scan: g = dLoss/dh_t = g_{t+1} * dA_{t+1} + dy_t C_t
            for i in range(steps - 1, -1, -1):
                t = t0 + i
                dts = gates[0, i]
                u_t = u[b, t, lo:lo + w]
                dout_t = dout[b, t, lo:lo + w]
                if has_z:
                    yv = ys[i]
                    zsig = gates[2, i]
                    z_t = z[b, t, lo:lo + w]
                    dz_t = dz[b, t, lo:lo + w]
                    for j in range(w):
                        g_out = dout_t[j]
                        zt = z_t[j]
                        sz = zsig[j]
                        dz_t[j] = g_out * yv[j] * sz * (one + zt * (one - sz))
                    for j in range(w):
                        dy[j] = dout_t[j] * z_t[j] * zsig[j]
                else:
                    for j in range(w):
                        dy[j] = dout_t[j]
                for j in range(w):
                    ut = u_t[j]
                    dD_acc[j] += dy[j] * ut
                    dtu[j] = dts[j] * ut
                    sa[j] = zero
                    dub[j] = zero
                for n in range(nstate):
                    cn = Ct[b, t, n]
                    bn = Bt[b, t, n]
                    grow = g[n]
                    h_cur = hs[i + 1, n]
                    h_prev = hs[i, n]
                    da_n = das[i, n]
                    a_row = At[n, lo:lo + w]
                    dA_row = dA_acc[n]
                    rc = zero
                    rb = zero
                    for j in range(w):
                        gj = grow[j] + dy[j] * cn
                        rc += dy[j] * h_cur[j]  # reductions over the channels, in registers
                        rb += dtu[j] * gj
                        decayed = gj * da_n[j]
                        gdh_j = decayed * h_prev[j]
                        dA_row[j] += dts[j] * gdh_j
                        sa[j] += gdh_j * a_row[j]
                        dub[j] += gj * bn
                        grow[j] = decayed if abs(decayed) >= tiny else zero  # flushed below TINY
                    dC_part[grp, b, t, n] += rc
                    dB_part[grp, b, t, n] += rb
                sig = gates[1, i]
                ddelta_t = ddelta[b, t, lo:lo + w]
                du_t = du[b, t, lo:lo + w]
                for j in range(w):
                    ddelta_t[j] = (sa[j] + u_t[j] * dub[j]) * sig[j]
                for j in range(w):
                    dbias_acc[j] += ddelta_t[j]
                for j in range(w):
                    du_t[j] = dy[j] * dvec[j] + dub[j] * dts[j]
        for n in range(nstate):
            dA_row = dA_part[b, n, lo:lo + w]
            for j in range(w):
                dA_row[j] = dA_acc[n, j]
        dD_row = dD_part[b, lo:lo + w]
        dbias_row = dbias_part[b, lo:lo + w]
        for j in range(w):
            dD_row[j] = dD_acc[j]
            dbias_row[j] = dbias_acc[j]


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ``ValueError`` with the offending argument on any shape, device or dtype mismatch."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
               "delta_bias": delta_bias}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"selective_scan (cpu backend): {name} is on {t.device}, not cpu")
        if t.dtype not in CPU_DTYPES:
            raise ValueError(
                f"selective_scan (cpu backend): {name} has dtype {t.dtype}; float32 and float64 "
                "are supported (cast with .float())"
            )


def _ngroups(batch: int, dim: int) -> int:
    """Channel groups per batch row, so that batch * groups work items fill the cores (each
    group keeps at least 16 channels, one AVX-512 vector of float32)."""
    threads = numba.get_num_threads()
    if batch >= 2 * threads:
        return 1
    return max(1, min(-(-dim // 16), -(-2 * threads // batch)))


def _channels_last(t: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """(batch, dim, L) -> contiguous (batch, L, dim) NumPy array (free when ``t`` is a transposed
    view of a (batch, L, dim) tensor, as the Mamba layer's delta is); a dummy for ``None``."""
    return as_numpy(None if t is None else t.transpose(1, 2), dtype)


class SelectiveScanCPU(torch.autograd.Function):
    """``torch.autograd.Function`` around the numba kernels (see the module docstring)."""

    @staticmethod
    @profiled("selective_scan_cpu_fwd")
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        nb, nd, length = u.shape
        nstate = A.shape[1]
        nchunks = max(1, -(-length // CHUNK))
        out = torch.empty((nb, length, nd), dtype=dtype)
        ckpt = torch.empty((nb, nchunks, nstate, nd), dtype=dtype)
        last = torch.empty((nb, nstate, nd), dtype=dtype)
        if length > 0:
            _scan_fwd(_channels_last(u, dtype), _channels_last(delta, dtype), as_numpy(A.t(), dtype),
                      as_numpy(B.transpose(1, 2), dtype), as_numpy(C.transpose(1, 2), dtype),
                      as_numpy(D, dtype).reshape(-1), _channels_last(z, dtype),
                      as_numpy(delta_bias, dtype).reshape(-1),
                      D is not None, z is not None, delta_bias is not None, bool(delta_softplus),
                      CHUNK, dtype == torch.float32, _ngroups(nb, nd),
                      out.numpy(), ckpt.numpy(), last.numpy())
        else:
            last.zero_()
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.dtype = dtype
        out = out.transpose(1, 2).to(u.dtype)  # (batch, dim, L), a view: the layer transposes back
        if return_last_state:
            return out, last.transpose(1, 2).contiguous()
        return out

    @staticmethod
    @profiled("selective_scan_cpu_bwd")
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        dtype = ctx.dtype
        nb, nd, length = u.shape
        nstate = A.shape[1]
        dlast = rest[0] if rest else None
        ngroups = _ngroups(nb, nd)
        # every element of du, ddelta and dz is written by the kernel
        du = torch.empty((nb, length, nd), dtype=dtype)
        ddelta = torch.empty((nb, length, nd), dtype=dtype)
        dz = torch.empty((nb, length, nd), dtype=dtype) if z is not None else torch.zeros(1, 1, 1, dtype=dtype)
        dA_part = torch.zeros((nb, nstate, nd), dtype=torch.float64)
        dD_part = torch.zeros((nb, nd), dtype=torch.float64)
        dbias_part = torch.zeros((nb, nd), dtype=torch.float64)
        dB_part = torch.zeros((ngroups, nb, length, nstate), dtype=dtype)
        dC_part = torch.zeros((ngroups, nb, length, nstate), dtype=dtype)
        if length > 0:
            _scan_bwd(_channels_last(u, dtype), _channels_last(delta, dtype), as_numpy(A.t(), dtype),
                      as_numpy(B.transpose(1, 2), dtype), as_numpy(C.transpose(1, 2), dtype),
                      as_numpy(D, dtype).reshape(-1), _channels_last(z, dtype),
                      as_numpy(delta_bias, dtype).reshape(-1),
                      D is not None, z is not None, delta_bias is not None, ctx.delta_softplus,
                      CHUNK, dtype == torch.float32, ngroups, ckpt.numpy(), _channels_last(dout, dtype),
                      _channels_last(dlast, dtype) if dlast is not None else np.zeros((1, 1, 1), dtype=ckpt.numpy().dtype),
                      dlast is not None,
                      du.numpy(), ddelta.numpy(), dz.numpy(), dA_part.numpy(), dD_part.numpy(),
                      dbias_part.numpy(), dB_part.numpy(), dC_part.numpy())
        dB = dB_part.sum(0).transpose(1, 2).to(B.dtype)
        dC = dC_part.sum(0).transpose(1, 2).to(C.dtype)
        return (
            du.transpose(1, 2).to(u.dtype),
            ddelta.transpose(1, 2).to(delta.dtype),
            dA_part.sum(0).t().to(A.dtype),
            dB,
            dC,
            dD_part.sum(0).to(D.dtype) if D is not None else None,
            dz.transpose(1, 2).to(z.dtype) if z is not None else None,
            dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            None,
        )


def selective_scan_cpu(
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
    """Fused CPU selective scan; same signature, shapes and semantics as mamba-ssm's
    ``selective_scan_fn`` (see :func:`recbole_mamba.ops.selective_scan_ref.selective_scan_ref`).

    Returns out (batch, dim, L) and, with ``return_last_state``, the last state (batch, dim, N),
    through which gradients also flow.
    """
    return SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state)
