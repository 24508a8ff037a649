"""Fused selective scan for CPUs: forward and backward as compiled loops (numba).

Why numba and not a C++ extension: numba compiles on first call from a wheel that pip installs
everywhere (no compiler, no torch headers, no build step that can fail on a fresh machine), its
``parallel=True`` + ``prange`` spreads the (batch, channel) pairs over all cores, and
``cache=True`` keeps the machine code on disk so the compile cost (a few seconds per dtype) is paid
once per installation, not per run. A C++ extension through ``torch.utils.cpp_extension`` would
need a compiler at import time on every user's machine.

Algorithm (per batch element b and channel d, all in registers / small thread-local buffers):

* forward: ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t``, ``y_t = <h_t, C_t> + D u_t``,
  ``out_t = y_t * silu(z_t)``. Only the state at the start of every chunk of ``CHUNK`` steps is
  kept for backward: O(B*D*N*L/CHUNK) memory instead of the O(B*D*L*N) that autograd over the
  reference loop stores.
* backward: chunks in reverse; each chunk's states are recomputed from its checkpoint, then a
  reverse scan carries ``g = dLoss/dh_t`` and accumulates the gradients of u, delta (through the
  softplus), A, B, C, D, z and delta_bias. dB and dC (shared by all channels) are accumulated
  per thread-group without write conflicts.

Inputs: u, delta, z (B, D, L); A (D, N); B, C (B, N, L); D, delta_bias (D,), float32 or float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload

CHUNK = 64
"""Steps between two saved states; backward recomputes the states of one chunk at a time."""

_FASTMATH = {"contract", "arcp", "reassoc", "nsz", "afn"}  # no nnan/ninf: NaN must propagate


# The loops over the state size N are written as separate simple loops over contiguous rows
# (exp, update, reduction) so that LLVM vectorises each of them (N=16 float32 is one AVX-512
# register); a single fused loop with a branch inside stays scalar and runs ~3x slower.
#
# llvmlite's pip wheels have no vector math library (SVML), so ``math.exp`` in a loop stays a
# scalar libm call and is the bottleneck (one exp per state element and step). For float32 we
# use our own exp below: Cody-Waite range reduction, the Cephes ``expf`` polynomial, and 2**k
# built in the exponent bits of an int32 buffer viewed as float32. It is plain arithmetic, so it
# vectorises (16 float32 lanes with AVX-512); max relative error 8.1e-8 over [-87, 88] (under
# one float32 ulp). Every scalar in it must stay float32 (see ``_like``; ``math.floor`` returns
# int64 and once made the polynomial float64): the one-step state update (batch 256, d_inner
# 128, N 32) takes 0.37 ms with it against 1.9 ms with ``math.exp``. float64 (gradcheck) keeps
# ``math.exp``.


def _like(x, ref):  # pragma: no cover - replaced by the overload inside compiled code
    """``x`` converted to ``ref``'s dtype (float32 or float64).

    Numba types float literals as float64, and one float64 scalar in a loop turns all of its
    float32 arithmetic into float64 (half the SIMD width plus conversions). Every scalar that
    meets array data goes through this cast.
    """
    return x


@overload(_like, inline="always")
def _ol_like(x, ref):
    if isinstance(ref, types.Array) and ref.dtype == types.float32:
        return lambda x, ref: np.float32(x)
    return lambda x, ref: np.float64(x)


@njit(inline="always", fastmath=_FASTMATH)
def _exp_row(dt, a_row, out, ibuf, fview, fast):  # pragma: no cover - compiled
    """out[n] = exp(dt * a_row[n]) for every n."""
    if not fast:
        for n in range(a_row.shape[0]):
            out[n] = math.exp(dt * a_row[n])
        return
    lo = _like(-87.0, a_row)
    hi = _like(88.0, a_row)
    log2e = _like(1.4426950408889634, a_row)
    half = _like(0.5, a_row)
    one = _like(1.0, a_row)
    ln2_hi = _like(0.693359375, a_row)
    ln2_lo = _like(2.12194440e-4, a_row)
    c0 = _like(1.9875691500e-4, a_row)
    c1 = _like(1.3981999507e-3, a_row)
    c2 = _like(8.3334519073e-3, a_row)
    c3 = _like(4.1665795894e-2, a_row)
    c4 = _like(1.6666665459e-1, a_row)
    c5 = _like(5.0000001201e-1, a_row)
    for n in range(a_row.shape[0]):
        x = dt * a_row[n]
        x = lo if x < lo else x  # written so that NaN passes through
        x = hi if x > hi else x
        kf = np.floor(x * log2e + half)  # np.floor keeps the dtype (math.floor gives int64,
        # which would turn the polynomial into float64 arithmetic at half the SIMD width)
        r = x - kf * ln2_hi + kf * ln2_lo
        p = (((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r * r + r + one
        out[n] = p
        ibuf[n] = (np.int32(kf) + 127) << 23
    for n in range(a_row.shape[0]):
        out[n] *= fview[n]


@njit(inline="always", fastmath=_FASTMATH)
def _softplus_sigmoid_row(raw, out, sig, tmp, ibuf, fast, softplus):  # pragma: no cover - compiled
    """For every i: out[i] = softplus(raw[i]) (or raw[i] when not ``softplus``) and
    sig[i] = sigmoid(raw[i]) (d softplus / d raw; 1 when not ``softplus``).

    For float32 both come from one vectorised exp: e = exp(-|r|) in (0, 1], softplus(r) =
    max(r, 0) + log1p(e) and sigmoid(r) = 1/(1 + e) for r >= 0, e/(1 + e) below. log1p(e) is
    2 atanh(e / (2 + e)) by its odd series up to s^13 (s <= 1/3: truncation error < 1e-8).
    Done per chunk of steps ahead of the scan loop, these replace three scalar libm calls per
    (row, channel, step), which were a third of the scan's time.
    """
    n = raw.shape[0]
    one = _like(1.0, raw)
    zero = _like(0.0, raw)
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
        tmp[i] = -abs(raw[i])
    _exp_row(one, tmp, tmp, ibuf, ibuf.view(np.float32), fast)
    two = _like(2.0, raw)
    k3 = _like(1.0 / 3.0, raw)
    k5 = _like(1.0 / 5.0, raw)
    k7 = _like(1.0 / 7.0, raw)
    k9 = _like(1.0 / 9.0, raw)
    k11 = _like(1.0 / 11.0, raw)
    k13 = _like(1.0 / 13.0, raw)
    for i in range(n):
        e = tmp[i]
        r = raw[i]
        s = e / (two + e)
        s2 = s * s
        log1p_e = two * s * (one + s2 * (k3 + s2 * (k5 + s2 * (k7 + s2 * (k9 + s2 * (k11 + s2 * k13))))))
        out[i] = (r if r > zero else zero) + log1p_e
        sig[i] = (one if r >= zero else e) / (one + e)


@njit(inline="always")
def _gate_buffers(chunk, dtype):  # pragma: no cover - compiled
    """Per-thread scratch of :func:`_chunk_gates`: (raw, tmp, dts, sig, zsig, ibuf)."""
    return (np.empty(chunk, dtype=dtype), np.empty(chunk, dtype=dtype), np.empty(chunk, dtype=dtype),
            np.empty(chunk, dtype=dtype), np.empty(chunk, dtype=dtype), np.empty(chunk, dtype=np.int32))


@njit(inline="always", fastmath=_FASTMATH)
def _chunk_gates(delta, z, b, d, t0, steps, bb, has_z, softplus, fast, raw, tmp, dts, sig, zsig,
                 ibuf):  # pragma: no cover - compiled
    """Steps t0 .. t0+steps-1 of (b, d), vectorised ahead of the recurrence (forward and
    backward alike): dts = softplus(delta + bias), sig = its derivative, zsig = sigmoid(z)."""
    for i in range(steps):
        raw[i] = delta[b, d, t0 + i] + bb
    _softplus_sigmoid_row(raw[:steps], dts, sig, tmp, ibuf, fast, softplus)
    if has_z:
        _softplus_sigmoid_row(z[b, d, t0:t0 + steps], tmp, zsig, raw, ibuf, fast, True)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _scan_fwd(u, delta, A, Bt, Ct, Dv, z, bias, has_d, has_z, has_bias, softplus, chunk, fast_exp,
              out, ckpt, last):  # pragma: no cover - compiled
    nb, nd, length = u.shape
    nstate = A.shape[1]
    nchunks = ckpt.shape[2]
    for bd in prange(nb * nd):
        b = bd // nd
        d = bd % nd
        h = np.zeros(nstate, dtype=u.dtype)
        da = np.empty(nstate, dtype=u.dtype)
        ibuf = np.empty(nstate, dtype=np.int32)
        fview = ibuf.view(np.float32)
        raw, tmp, dts, sig, gate, ibuf_t = _gate_buffers(chunk, u.dtype)
        a_row = A[d]
        zero = _like(0.0, A)
        dd = Dv[d] if has_d else zero
        bb = bias[d] if has_bias else zero
        for c in range(nchunks):
            ck = ckpt[b, d, c]
            for n in range(nstate):
                ck[n] = h[n]
            t0 = c * chunk
            steps = min(length, t0 + chunk) - t0
            _chunk_gates(delta, z, b, d, t0, steps, bb, has_z, softplus, fast_exp,
                         raw, tmp, dts, sig, gate, ibuf_t)
            if has_z:
                for i in range(steps):
                    gate[i] *= z[b, d, t0 + i]  # silu(z) = z * sigmoid(z)
            for i in range(steps):
                t = t0 + i
                dt = dts[i]
                ut = u[b, d, t]
                dtu = dt * ut
                brow = Bt[b, t]
                crow = Ct[b, t]
                _exp_row(dt, a_row, da, ibuf, fview, fast_exp)
                for n in range(nstate):
                    h[n] = da[n] * h[n] + dtu * brow[n]
                y = zero
                for n in range(nstate):
                    y += h[n] * crow[n]
                y += dd * ut
                if has_z:
                    y *= gate[i]
                out[b, d, t] = y
        lst = last[b, d]
        for n in range(nstate):
            lst[n] = h[n]


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _scan_bwd(u, delta, A, Bt, Ct, Dv, z, bias, has_d, has_z, has_bias, softplus, chunk, fast_exp,
              ckpt, dout, dlast, has_dlast, ngroups,
              du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part):  # pragma: no cover
    nb, nd, length = u.shape
    nstate = A.shape[1]
    nchunks = ckpt.shape[2]
    per_group = (nd + ngroups - 1) // ngroups
    for bg in prange(nb * ngroups):
        b = bg // ngroups
        grp = bg % ngroups
        d_lo = grp * per_group
        d_hi = min(nd, d_lo + per_group)
        hs = np.empty((chunk + 1, nstate), dtype=u.dtype)
        das = np.empty((chunk, nstate), dtype=u.dtype)
        raw, tmp, dts, sig, szs, ibuf_t = _gate_buffers(chunk, u.dtype)
        g = np.empty(nstate, dtype=u.dtype)
        dA_acc = np.empty(nstate, dtype=u.dtype)
        ibuf = np.empty(nstate, dtype=np.int32)
        fview = ibuf.view(np.float32)
        zero = _like(0.0, A)
        one = _like(1.0, A)
        for d in range(d_lo, d_hi):
            a_row = A[d]
            dd = Dv[d] if has_d else zero
            bb = bias[d] if has_bias else zero
            for n in range(nstate):
                g[n] = _like(dlast[b, d, n], A) if has_dlast else zero
                dA_acc[n] = zero
            dD_acc = 0.0  # float64: summed over all L steps
            dbias_acc = 0.0
            for c in range(nchunks - 1, -1, -1):
                t0 = c * chunk
                t1 = min(length, t0 + chunk)
                ck = ckpt[b, d, c]
                h0 = hs[0]
                for n in range(nstate):
                    h0[n] = ck[n]
                _chunk_gates(delta, z, b, d, t0, t1 - t0, bb, has_z, softplus, fast_exp,
                             raw, tmp, dts, sig, szs, ibuf_t)
                for t in range(t0, t1):
                    i = t - t0
                    dt = dts[i]
                    dtu = dt * u[b, d, t]
                    brow = Bt[b, t]
                    da_i = das[i]
                    h_prev = hs[i]
                    h_next = hs[i + 1]
                    _exp_row(dt, a_row, da_i, ibuf, fview, fast_exp)
                    for n in range(nstate):
                        h_next[n] = da_i[n] * h_prev[n] + dtu * brow[n]
                for t in range(t1 - 1, t0 - 1, -1):
                    i = t - t0
                    dt = dts[i]
                    ut = u[b, d, t]
                    g_out = dout[b, d, t]
                    brow = Bt[b, t]
                    crow = Ct[b, t]
                    h_prev = hs[i]
                    h_cur = hs[i + 1]
                    da_i = das[i]
                    if has_z:
                        y = zero
                        for n in range(nstate):
                            y += h_cur[n] * crow[n]
                        y += dd * ut
                        zt = z[b, d, t]
                        sz = szs[i]
                        dz[b, d, t] = g_out * y * sz * (one + zt * (one - sz))
                        dy = g_out * zt * sz
                    else:
                        dy = g_out
                    dD_acc += dy * ut
                    dtu = dt * ut
                    dcrow = dC_part[grp, b, t]
                    dbrow = dB_part[grp, b, t]
                    ddt = zero
                    dub = zero
                    for n in range(nstate):
                        gn = g[n] + dy * crow[n]
                        gdh = gn * da_i[n] * h_prev[n]
                        dcrow[n] += dy * h_cur[n]
                        ddt += gdh * a_row[n] + gn * brow[n] * ut
                        dA_acc[n] += gdh * dt
                        dbrow[n] += gn * dtu
                        dub += gn * brow[n]
                        g[n] = gn * da_i[n]
                    dr = ddt * sig[i]
                    ddelta[b, d, t] = dr
                    dbias_acc += dr
                    du[b, d, t] = dy * dd + dub * dt
            for n in range(nstate):
                dA_part[b, d, n] = dA_acc[n]
            dD_part[b, d] = dD_acc
            dbias_part[b, d] = dbias_acc


_SUPPORTED = (torch.float32, torch.float64)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, device_and_dtype: bool = True) -> None:
    """Raise ``ValueError`` with the offending argument on any shape (and, for this CPU op,
    dtype/device) mismatch."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    nb, nd, length = u.shape
    if A.dim() != 2 or A.shape[0] != nd:
        raise ValueError(f"selective_scan: A must be (dim={nd}, N), got {tuple(A.shape)}")
    nstate = A.shape[1]
    expected = {
        "delta": (delta, (nb, nd, length)),
        "B": (B, (nb, nstate, length)),
        "C": (C, (nb, nstate, length)),
        "z": (z, (nb, nd, length)),
        "D": (D, (nd,)),
        "delta_bias": (delta_bias, (nd,)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"selective_scan: {name} must have shape {shape} (u is {tuple(u.shape)}, "
                f"A is {tuple(A.shape)}), got {tuple(t.shape)}"
            )
    if not device_and_dtype:
        return
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
               "delta_bias": delta_bias}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"selective_scan (cpu backend): {name} is on {t.device}, not cpu")
        if t.dtype not in _SUPPORTED:
            raise ValueError(
                f"selective_scan (cpu backend): {name} has dtype {t.dtype}; float32 and float64 "
                "are supported (cast with .float())"
            )


def as_numpy(t: torch.Tensor | None, dtype: torch.dtype, ndim: int = 3) -> np.ndarray:
    """A contiguous NumPy view of ``t`` in ``dtype``; for ``None`` a 1-element dummy with
    ``ndim`` dimensions (a compiled kernel's argument types fix each array's rank)."""
    if t is None:
        return np.zeros((1,) * ndim, dtype=np.float64 if dtype == torch.float64 else np.float32)
    return t.detach().to(dtype).contiguous().numpy()


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must see an op on ``tensors``: the fused CPU kernels of the one-step
    ops are inference-only, so their dispatch falls back to the torch form then."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fusable_state(*states: torch.Tensor) -> bool:
    """Whether the fused CPU one-step kernels can update ``states`` in place: contiguous CPU
    tensors, all float32 or all float64."""
    dtype = states[0].dtype
    return dtype in _SUPPORTED and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype == dtype for t in states)


def _ngroups(batch: int, dim: int) -> int:
    """Channel groups per batch element in backward, so that batch*groups fills the cores."""
    threads = numba.get_num_threads()
    if batch >= 2 * threads:
        return 1
    return max(1, min(dim, -(-2 * threads // batch)))


class SelectiveScanCPU(torch.autograd.Function):
    """``torch.autograd.Function`` around the numba kernels (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        nb, nd, length = u.shape
        nstate = A.shape[1]
        u_, delta_, z_ = as_numpy(u, dtype), as_numpy(delta, dtype), as_numpy(z, dtype)
        A_ = as_numpy(A, dtype)
        Bt = as_numpy(B.transpose(1, 2), dtype)  # (B, L, N): contiguous over N for the inner loop
        Ct = as_numpy(C.transpose(1, 2), dtype)
        D_ = as_numpy(D, dtype).reshape(-1)
        bias_ = as_numpy(delta_bias, dtype).reshape(-1)
        nchunks = max(1, -(-length // CHUNK))
        out = torch.empty((nb, nd, length), dtype=dtype)
        ckpt = torch.empty((nb, nd, nchunks, nstate), dtype=dtype)
        last = torch.empty((nb, nd, nstate), dtype=dtype)
        if length > 0:
            _scan_fwd(u_, delta_, A_, Bt, Ct, D_, z_, bias_, D is not None, z is not None,
                      delta_bias is not None, bool(delta_softplus), CHUNK,
                      dtype == torch.float32,
                      out.numpy(), ckpt.numpy(), last.numpy())
        else:
            last.zero_()
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.dtype = dtype
        out = out.to(u.dtype)
        if return_last_state:
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        dtype = ctx.dtype
        nb, nd, length = u.shape
        nstate = A.shape[1]
        dlast = rest[0] if rest else None
        ngroups = _ngroups(nb, nd)
        du = torch.zeros((nb, nd, length), dtype=dtype)
        ddelta = torch.zeros((nb, nd, length), dtype=dtype)
        dz = torch.zeros((nb, nd, length), dtype=dtype) if z is not None else torch.zeros(1, 1, 1, dtype=dtype)
        dA_part = torch.zeros((nb, nd, nstate), dtype=torch.float64)
        dD_part = torch.zeros((nb, nd), dtype=torch.float64)
        dbias_part = torch.zeros((nb, nd), dtype=torch.float64)
        dB_part = torch.zeros((ngroups, nb, length, nstate), dtype=dtype)
        dC_part = torch.zeros((ngroups, nb, length, nstate), dtype=dtype)
        if length > 0:
            _scan_bwd(as_numpy(u, dtype), as_numpy(delta, dtype), as_numpy(A, dtype),
                      as_numpy(B.transpose(1, 2), dtype), as_numpy(C.transpose(1, 2), dtype),
                      as_numpy(D, dtype).reshape(-1), as_numpy(z, dtype), as_numpy(delta_bias, dtype).reshape(-1),
                      D is not None, z is not None, delta_bias is not None, ctx.delta_softplus,
                      CHUNK, dtype == torch.float32, ckpt.numpy(), as_numpy(dout, dtype),
                      as_numpy(dlast, dtype) if dlast is not None else np.zeros((1, 1, 1), dtype=ckpt.numpy().dtype),
                      dlast is not None, ngroups,
                      du.numpy(), ddelta.numpy(), dz.numpy(), dA_part.numpy(), dD_part.numpy(),
                      dbias_part.numpy(), dB_part.numpy(), dC_part.numpy())
        dB = dB_part.sum(0).transpose(1, 2).to(B.dtype)
        dC = dC_part.sum(0).transpose(1, 2).to(C.dtype)
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA_part.sum(0).to(A.dtype),
            dB,
            dC,
            dD_part.sum(0).to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
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
