"""MLSA4Rec's causal low-rank attention over a whole sequence, forward and backward, for CPUs.

Per row and position t (P latent interests, H heads of D/H channels)::

    K'_t[p] = sum_{s<=t} softmax_{s<=t}(logit_k[s, p]) * key_x[s]          (same for V' with value_x)
    score[t, h, p] = <q[t]_h, K'_t[p]_h> * scale
    prob[t, h, :]  = Dropout(softmax over the P interests of score[t, h, :])
    ctx[t]_h       = sum_p prob[t, h, p] * V'_t[p]_h

Shapes: q, key_x, value_x (batch, L, D); logit_k, logit_v (batch, L, P), ``-inf`` at padding
(those positions are left out of every pooling) -> ctx (batch, L, D). This is
``LowRankSelfAttention``'s causal form (its torch form off CPU is ``_causal_by_chunks``; both
are tested against :func:`causal_lsa_ref`, the formulas above literally), as one recurrence per row.

Why our own kernel: in torch the causal pooling needs either (batch, L, P, D) prefix sums or,
chunked, ~60 small batched products, divisions and casts per call, for little arithmetic
(figures in docs/backends.md). And the torch forms shift all prefixes by one max (the sequence's), so prefixes far below
it need float64 (see ``layers.lsa.FLOAT32_SAFE_SPREAD``). Here each row runs the online softmax
of :mod:`recbole_mamba.ops.causal_lsa_step` position by position: a running max per interest, with
which every weight is <= 1 and every normaliser >= 1, so float32 is exact enough at any spread.

Backward (one reverse pass per row) recomputes the running sums chunk by chunk from checkpoints
kept every ``CHUNK`` positions (O(L / CHUNK * P * D) memory, not O(L * P * D)) and carries, per
pooling and interest, ``G_t = sum_{u>=t} exp(m_t - m_u) dK'_u / Z_u`` and ``c_t = sum_{u>=t}
exp(m_t - m_u) <K'_u, dK'_u> / Z_u`` backwards (m: running max, Z: normaliser relative to it),
every factor <= 1. Then ``dkey_x[t] = sum_p e_tp G_tp`` and ``dlogit[t, p] = e_tp (<key_x[t],
G_tp> - c_tp)`` with ``e_tp = exp(logit[t, p] - m_tp)``. The attention dropout's mask is
:func:`recbole_mamba.ops.dropout_cpu.keep_hash` of (seed, flat index into (batch, L, H, P)), so
backward recomputes it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numba import njit, prange

from recbole_mamba.ops.cpu_common import CPU_DTYPES, FASTMATH, as_numpy, exp_or_zero, exp_row, like, pool_update
from recbole_mamba.ops.dropout_cpu import draw_seed, keep_hash, threshold
from recbole_mamba.ops.profiling import profiled

CHUNK = 32
"""Positions between two saved running states; backward recomputes one chunk at a time."""


# The per-head loops run over D/H channels (8 for MLSA4Rec's hidden 64 and 8 heads). With a
# run-time trip count that short, LLVM's vector loop never runs and the scalar remainder plus
# its set-up cost more than the work (these loops were ~85% of the forward). The helpers below
# branch to fixed trip counts for the usual head sizes, which LLVM turns into single vector ops.
@njit(inline="always", fastmath=FASTMATH)
def _seg_dot(a, b, o, dh):  # pragma: no cover - compiled
    """sum_j a[o + j] * b[o + j], j < dh."""
    acc = like(0.0, a)
    if dh == 8:
        for j in range(8):
            acc += a[o + j] * b[o + j]
    elif dh == 16:
        for j in range(16):
            acc += a[o + j] * b[o + j]
    elif dh == 4:
        for j in range(4):
            acc += a[o + j] * b[o + j]
    else:
        for j in range(dh):
            acc += a[o + j] * b[o + j]
    return acc


@njit(inline="always", fastmath=FASTMATH)
def _seg_axpy(w, x, out, o, dh):  # pragma: no cover - compiled
    """out[o + j] += w * x[o + j], j < dh."""
    if dh == 8:
        for j in range(8):
            out[o + j] += w * x[o + j]
    elif dh == 16:
        for j in range(16):
            out[o + j] += w * x[o + j]
    elif dh == 4:
        for j in range(4):
            out[o + j] += w * x[o + j]
    else:
        for j in range(dh):
            out[o + j] += w * x[o + j]


@njit(inline="always", fastmath=FASTMATH)
def _seg_scale(w, x, out, o, dh):  # pragma: no cover - compiled
    """out[o + j] = w * x[o + j], j < dh."""
    if dh == 8:
        for j in range(8):
            out[o + j] = w * x[o + j]
    elif dh == 16:
        for j in range(16):
            out[o + j] = w * x[o + j]
    elif dh == 4:
        for j in range(4):
            out[o + j] = w * x[o + j]
    else:
        for j in range(dh):
            out[o + j] = w * x[o + j]


@njit(inline="always", fastmath=FASTMATH)
def _inverse(norm, out):  # pragma: no cover - compiled
    """out[p] = 1 / norm[p], 0 for an empty pooling (norm 0: no real position yet)."""
    for p in range(norm.shape[0]):
        out[p] = 1 / norm[p] if norm[p] > 0 else 0


@njit(inline="always", fastmath=FASTMATH)
def _softmax_rows(scores, arg, fast):  # pragma: no cover - compiled
    """In place, each row of scores (H, P) -> its softmax over P."""
    for h in range(scores.shape[0]):
        row = scores[h]
        top = row[0]
        for p in range(1, row.shape[0]):
            top = row[p] if row[p] > top else top
        for p in range(row.shape[0]):
            arg[p] = row[p] - top
        exp_row(like(1.0, row), arg, row, fast)
        tot = like(0.0, row)
        for p in range(row.shape[0]):
            tot += row[p]
        for p in range(row.shape[0]):
            row[p] = row[p] / tot


@njit(inline="always", fastmath=FASTMATH)
def _drop_factors(b, t, length, seed, thresh, drop_scale, out):  # pragma: no cover - compiled
    """out (H, P): the attention dropout's factor (1 / (1 - p) kept, 0 dropped) of each interest
    weight of (row b, position t)."""
    n_heads, nint = out.shape
    base = (b * length + t) * n_heads * nint
    zero = like(0.0, out)
    for h in range(n_heads):
        for p in range(nint):
            out[h, p] = drop_scale if keep_hash(seed, base + h * nint + p) >= thresh else zero


@njit(inline="always", fastmath=FASTMATH)
def _mix(probs, b, t, length, has_drop, seed, thresh, drop_scale, factor, mix):  # pragma: no cover
    """mix (H, P) = probs (H, P) after the attention dropout of (row b, position t); factor (H,
    P) gets the dropout's factors (backward applies them to the gradient)."""
    if not has_drop:
        mix[:] = probs
        return
    _drop_factors(b, t, length, seed, thresh, drop_scale, factor)
    for h in range(probs.shape[0]):
        for p in range(probs.shape[1]):
            mix[h, p] = probs[h, p] * factor[h, p]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _lsa_fwd(q, kx, vx, lk, lv, n_heads, scale, has_drop, seed, thresh, drop_scale, chunk, fast,
             save, ctx, probs_out, ck_top, ck_norm, ck_total):  # pragma: no cover - compiled
    # q, kx, vx, ctx (B, L, D); lk, lv (B, L, P); probs_out (B, L, H, P) (softmax before dropout);
    # ck_top, ck_norm (B, chunks, 2, P), ck_total (B, chunks, 2, P, D): the running state before
    # positions 0, chunk, 2 chunk, ... (pooling 0: keys, 1: values); written when ``save``
    nb, length, dim = q.shape
    nint = lk.shape[2]
    dh = dim // n_heads
    for b in prange(nb):
        top = np.full((2, nint), -np.inf, dtype=q.dtype)
        norm = np.zeros((2, nint), dtype=q.dtype)
        total = np.zeros((2, nint, dim), dtype=q.dtype)
        arg = np.empty(nint, dtype=q.dtype)
        sc = np.empty(nint, dtype=q.dtype)
        wt = np.empty(nint, dtype=q.dtype)
        inv = np.empty((2, nint), dtype=q.dtype)
        probs = np.empty((n_heads, nint), dtype=q.dtype)
        mix = np.empty((n_heads, nint), dtype=q.dtype)
        factor = np.empty((n_heads, nint), dtype=q.dtype)
        for t in range(length):
            if save and t % chunk == 0:
                c = t // chunk
                ck_top[b, c] = top
                ck_norm[b, c] = norm
                ck_total[b, c] = total
            for k in range(2):
                logit, x = (lk[b, t], kx[b, t]) if k == 0 else (lv[b, t], vx[b, t])
                pool_update(logit, x, top[k], norm[k], total[k], top[k], norm[k], total[k], arg, sc,
                             wt, fast)
            _inverse(norm[0], inv[0])
            _inverse(norm[1], inv[1])
            qt = q[b, t]
            for p in range(nint):
                keys = total[0, p]
                f = inv[0, p] * scale
                for h in range(n_heads):
                    probs[h, p] = _seg_dot(keys, qt, h * dh, dh) * f
            _softmax_rows(probs, arg, fast)
            if save:
                probs_out[b, t] = probs
            _mix(probs, b, t, length, has_drop, seed, thresh, drop_scale, factor, mix)
            out = ctx[b, t]
            out[:] = 0
            for p in range(nint):
                values = total[1, p]
                for h in range(n_heads):
                    _seg_axpy(mix[h, p] * inv[1, p], values, out, h * dh, dh)


@njit(inline="always", fastmath=FASTMATH)
def _pool_backward(x, logit, top, norm, total, inv, grad, acc_g, acc_c, next_top, dx, dlogit,
                   arg, dec, e, fast):  # pragma: no cover - compiled
    """One position of one pooling's backward, for row b (arrays already indexed by b).

    top, norm (P,), total (P, D): the running state after position t; grad (P, D): dLoss/dK'_t;
    acc_g (P, D), acc_c (P,): G and c (module docstring), relative to next_top (the running max
    after t + 1), brought to position t here; dx (D,), dlogit (P,): this position's gradients."""
    nint, dim = total.shape
    for p in range(nint):
        m = top[p]
        nt = next_top[p]
        arg[p] = m - nt if (m != -np.inf and nt != -np.inf) else -np.inf
        e[p] = logit[p] - m if (m != -np.inf and logit[p] != -np.inf) else -np.inf
        next_top[p] = m
    exp_or_zero(arg, dec, fast)
    exp_or_zero(e, e, fast)
    dx[:] = 0
    for p in range(nint):
        f = inv[p]
        d = dec[p]
        g = acc_g[p]
        gr = grad[p]
        kp = total[p]
        c = like(0.0, total)
        for j in range(dim):
            c += kp[j] * gr[j]
            g[j] = g[j] * d + gr[j] * f
        acc_c[p] = acc_c[p] * d + c * f * f  # <K', dK'> / Z with K' = total / Z
        ep = e[p]
        xg = like(0.0, total)
        for j in range(dim):
            xg += x[j] * g[j]
            dx[j] += ep * g[j]
        dlogit[p] = ep * (xg - acc_c[p])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _lsa_bwd(q, kx, vx, lk, lv, n_heads, scale, has_drop, seed, thresh, drop_scale, chunk, fast,
             probs_in, ck_top, ck_norm, ck_total, dctx, dq, dkx, dvx, dlk, dlv):  # pragma: no cover
    # as _lsa_fwd; dctx, dq, dkx, dvx (B, L, D); dlk, dlv (B, L, P)
    nb, length, dim = q.shape
    nint = lk.shape[2]
    dh = dim // n_heads
    nchunks = ck_top.shape[1]
    for b in prange(nb):
        # running states before (index 0) and after each position of the chunk
        tops = np.empty((chunk + 1, 2, nint), dtype=q.dtype)
        norms = np.empty((chunk + 1, 2, nint), dtype=q.dtype)
        totals = np.empty((chunk + 1, 2, nint, dim), dtype=q.dtype)
        acc_g = np.zeros((2, nint, dim), dtype=q.dtype)
        acc_c = np.zeros((2, nint), dtype=q.dtype)
        next_top = np.full((2, nint), -np.inf, dtype=q.dtype)
        grad = np.empty((2, nint, dim), dtype=q.dtype)  # dLoss/dK'_t, dLoss/dV'_t
        inv = np.empty((2, nint), dtype=q.dtype)
        arg = np.empty(nint, dtype=q.dtype)
        sc = np.empty(nint, dtype=q.dtype)
        wt = np.empty(nint, dtype=q.dtype)
        mix = np.empty((n_heads, nint), dtype=q.dtype)
        dmix = np.empty((n_heads, nint), dtype=q.dtype)
        factor = np.empty((n_heads, nint), dtype=q.dtype)
        for c in range(nchunks - 1, -1, -1):
            t0 = c * chunk
            steps = min(length, t0 + chunk) - t0
            tops[0] = ck_top[b, c]
            norms[0] = ck_norm[b, c]
            totals[0] = ck_total[b, c]
            for i in range(steps):
                t = t0 + i
                for k in range(2):
                    logit, x = (lk[b, t], kx[b, t]) if k == 0 else (lv[b, t], vx[b, t])
                    pool_update(logit, x, tops[i, k], norms[i, k], totals[i, k], tops[i + 1, k],
                                 norms[i + 1, k], totals[i + 1, k], arg, sc, wt, fast)
            for i in range(steps, 0, -1):  # i: index of the state after position t
                t = t0 + i - 1
                _inverse(norms[i, 0], inv[0])
                _inverse(norms[i, 1], inv[1])
                probs = probs_in[b, t]
                _mix(probs, b, t, length, has_drop, seed, thresh, drop_scale, factor, mix)
                dout = dctx[b, t]
                qt = q[b, t]
                # ctx_h = sum_p mix[h, p] * inv_v[p] * total_v[p]_h
                for p in range(nint):
                    values = totals[i, 1, p]
                    gv = grad[1, p]
                    f = inv[1, p]
                    for h in range(n_heads):
                        dmix[h, p] = _seg_dot(dout, values, h * dh, dh) * f
                        _seg_scale(mix[h, p], dout, gv, h * dh, dh)
                # through the dropout and the softmax: dscore = prob * (dprob - <prob, dprob>)
                if has_drop:
                    for h in range(n_heads):
                        for p in range(nint):
                            dmix[h, p] *= factor[h, p]
                for h in range(n_heads):
                    dot = like(0.0, q)
                    for p in range(nint):
                        dot += probs[h, p] * dmix[h, p]
                    for p in range(nint):
                        dmix[h, p] = probs[h, p] * (dmix[h, p] - dot) * scale
                # score = <q_h, K'[p]_h> * scale, K' = total_k * inv_k
                dqt = dq[b, t]
                dqt[:] = 0
                for p in range(nint):
                    keys = totals[i, 0, p]
                    gk = grad[0, p]
                    f = inv[0, p]
                    for h in range(n_heads):
                        ds = dmix[h, p]
                        _seg_axpy(ds * f, keys, dqt, h * dh, dh)
                        _seg_scale(ds, qt, gk, h * dh, dh)
                _pool_backward(kx[b, t], lk[b, t], tops[i, 0], norms[i, 0], totals[i, 0], inv[0],
                               grad[0], acc_g[0], acc_c[0], next_top[0], dkx[b, t], dlk[b, t],
                               arg, sc, wt, fast)
                _pool_backward(vx[b, t], lv[b, t], tops[i, 1], norms[i, 1], totals[i, 1], inv[1],
                               grad[1], acc_g[1], acc_c[1], next_top[1], dvx[b, t], dlv[b, t],
                               arg, sc, wt, fast)


def _check(q, key_x, value_x, logit_k, logit_v, n_heads):
    if q.dim() != 3:
        raise ValueError(f"causal_lsa: q must be (batch, L, D), got shape {tuple(q.shape)}")
    batch, length, dim = q.shape
    if dim % n_heads:
        raise ValueError(f"causal_lsa: D={dim} is not a multiple of n_heads={n_heads}")
    nint = logit_k.shape[-1]
    expected = {"key_x": (key_x, (batch, length, dim)), "value_x": (value_x, (batch, length, dim)),
                "logit_k": (logit_k, (batch, length, nint)), "logit_v": (logit_v, (batch, length, nint))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"causal_lsa: {name} must have shape {shape} (q is {tuple(q.shape)}), "
                             f"got {tuple(t.shape)}")
    for name, t in {"q": q, "key_x": key_x, "value_x": value_x, "logit_k": logit_k, "logit_v": logit_v}.items():
        if t.device.type != "cpu" or t.dtype not in CPU_DTYPES:
            raise ValueError(f"causal_lsa (cpu): {name} must be a float32/float64 CPU tensor, "
                             f"got {t.dtype} on {t.device}")


class CausalLSACPU(torch.autograd.Function):
    """``torch.autograd.Function`` around the numba kernels (see the module docstring)."""

    @staticmethod
    @profiled("causal_lsa_cpu_fwd")
    def forward(ctx, q, key_x, value_x, logit_k, logit_v, n_heads, scale, dropout, seed):
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        batch, length, dim = q.shape
        nint = logit_k.shape[-1]
        nchunks = max(1, -(-length // CHUNK))
        save = any(ctx.needs_input_grad[:5])  # (grad mode is off inside forward)
        arrays = [as_numpy(t, dtype) for t in (q, key_x, value_x, logit_k, logit_v)]
        out = np.empty((batch, length, dim), dtype=arrays[0].dtype)
        shape = (batch, nchunks) if save else (1, 1)
        probs = np.empty((batch, length, n_heads, nint) if save else (1, 1, 1, 1), dtype=out.dtype)
        ck_top = np.empty((*shape, 2, nint), dtype=out.dtype)
        ck_norm = np.empty((*shape, 2, nint), dtype=out.dtype)
        ck_total = np.empty((*shape, 2, nint, dim), dtype=out.dtype)
        args = (int(n_heads), out.dtype.type(scale), dropout > 0, seed, threshold(dropout),
                out.dtype.type(1.0 / (1.0 - dropout)), CHUNK, dtype == torch.float32)
        if length:
            _lsa_fwd(*arrays, *args, save, out, probs, ck_top, ck_norm, ck_total)
        if save:  # the inputs through autograd (its version check catches in-place changes)
            ctx.save_for_backward(q, key_x, value_x, logit_k, logit_v)
            ctx.saved = (probs, ck_top, ck_norm, ck_total)
            ctx.args = args
            ctx.dtype = dtype
        return torch.from_numpy(out).to(q.dtype)

    @staticmethod
    @profiled("causal_lsa_cpu_bwd")
    def backward(ctx, dctx):
        inputs = ctx.saved_tensors
        arrays = [as_numpy(t, ctx.dtype) for t in inputs]
        grads = [np.empty_like(a) for a in arrays]
        if arrays[0].shape[1]:
            _lsa_bwd(*arrays, *ctx.args, *ctx.saved, as_numpy(dctx, ctx.dtype), *grads)
        out = [torch.from_numpy(g).to(t.dtype) for g, t in zip(grads, inputs)]
        return (*out, None, None, None, None)


def causal_lsa_ref(q: torch.Tensor, key_x: torch.Tensor, value_x: torch.Tensor, logit_k: torch.Tensor,
                   logit_v: torch.Tensor, n_heads: int, scale: float | None = None,
                   drop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The module docstring's formulas, literally, in plain torch: a softmax over every prefix,
    O(L^2 P D) work and (batch, L, L, P) memory. Same arguments and result as :func:`causal_lsa`;
    ``drop`` (optional) is applied to the interest weights prob (batch, L, H, P), as the
    attention dropout is. The reference of the kernel and of the layer's chunked torch form."""
    batch, length, dim = q.shape
    head_dim = dim // n_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    later = ~torch.ones(length, length, dtype=torch.bool, device=q.device).tril()  # (t, s): s > t

    def pooled(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # -> (batch, t, P, D)
        prefix = logits.unsqueeze(1).expand(batch, length, length, -1).masked_fill(
            later.view(1, length, length, 1), float("-inf"))
        return torch.einsum("btsp,bsd->btpd", torch.softmax(prefix, dim=2), x)

    keys = pooled(logit_k, key_x).reshape(batch, length, -1, n_heads, head_dim)
    values = pooled(logit_v, value_x).reshape(batch, length, -1, n_heads, head_dim)
    qh = q.reshape(batch, length, n_heads, head_dim)
    probs = torch.softmax(torch.einsum("blhd,blphd->blhp", qh, keys) * scale, dim=-1)
    if drop is not None:
        probs = drop(probs)
    return torch.einsum("blhp,blphd->blhd", probs, values).reshape(q.shape)


def causal_lsa(q: torch.Tensor, key_x: torch.Tensor, value_x: torch.Tensor, logit_k: torch.Tensor,
               logit_v: torch.Tensor, n_heads: int, scale: float | None = None, dropout: float = 0.0,
               seed: int | None = None) -> torch.Tensor:
    """Causal low-rank attention on CPU (module docstring): q, key_x, value_x (batch, L, D),
    logit_k, logit_v (batch, L, P) with ``-inf`` at padding -> ctx (batch, L, D).

    ``scale`` defaults to 1 / sqrt(D / n_heads); ``dropout`` is the attention dropout on the
    interest weights (training), its mask fixed by ``seed`` (default: drawn from torch's
    generator). Gradients flow to all five tensors.
    """
    _check(q, key_x, value_x, logit_k, logit_v, n_heads)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"causal_lsa: dropout must be in [0, 1), got {dropout}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1] // n_heads)
    seed = np.uint64(0) if dropout == 0 else (draw_seed() if seed is None else np.uint64(seed))
    return CausalLSACPU.apply(q, key_x, value_x, logit_k, logit_v, int(n_heads), float(scale),
                              float(dropout), seed)
