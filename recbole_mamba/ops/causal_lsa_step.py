"""One event of MLSA4Rec's causal low-rank attention (inference): ``causal_lsa_step``.

The causal interest pooling keeps, per pooling (key and value) and row, online-softmax sums over
the positions seen so far: a running max ``top`` (P,), a normaliser ``norm`` (P,) and a weighted
sum ``total`` (P, D), with pooled interests ``total / norm``. One new position with pooling
logits ``logit`` (P,) and projection ``x`` (D,) updates them (older terms rescaled when the max
grows)::

    new_top = max(top, logit);  s = exp(top - new_top);  w = exp(logit - new_top)
    norm    = norm * s + w;     total = total * s + w * x

and the query ``q`` (D,) of the new position, in H heads of D/H, reads the pooled values::

    score[h, p] = <q_h, total_k[p]_h> / (norm_k[p] * sqrt(D/H))
    prob[h, :]  = softmax over the P interests of score[h, :]
    ctx_h       = sum_p prob[h, p] * total_v[p]_h / norm_v[p]

Shapes: q, key_x, value_x (batch, D); logit_k, logit_v, top_*, norm_* (batch, P); total_*
(batch, P, D) -> ctx (batch, D); the six state tensors are updated in place.

With the cpu backend, no gradient needed and contiguous float32/float64 state, a numba kernel
does all of it in one pass over the two (P, D) sums per row. The torch form (:func:`causal_lsa_step_ref`, also the
reference in the tests) needs about ten passes and (batch, P, D) temporaries (figures in
docs/backends.md).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from recbole_mamba.ops.backend import resolve_backend
from recbole_mamba.ops.cpu_common import (FASTMATH, as_numpy, check_shapes, exp_row, fusable_state, like, needs_grad,
                                         pool_update)


def _running_update_ref(logit, x, top, norm, total):
    new_top = torch.maximum(top, logit)
    old_scale = torch.exp(top - new_top)  # 0 when the row was empty (top = -inf)
    new_w = torch.exp(logit - new_top)
    norm.copy_(torch.addcmul(new_w, norm, old_scale))
    total.mul_(old_scale.unsqueeze(-1)).addcmul_(new_w.unsqueeze(-1), x.unsqueeze(1))
    top.copy_(new_top)


def causal_lsa_step_ref(q: torch.Tensor, key_x: torch.Tensor, value_x: torch.Tensor, logit_k: torch.Tensor,
                 logit_v: torch.Tensor, top_k: torch.Tensor, norm_k: torch.Tensor, total_k: torch.Tensor,
                 top_v: torch.Tensor, norm_v: torch.Tensor, total_v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Plain torch (autograd-safe, any device); see the module docstring. Returns ctx (batch, D)."""
    _running_update_ref(logit_k, key_x, top_k, norm_k, total_k)
    _running_update_ref(logit_v, value_x, top_v, norm_v, total_v)
    batch, dim = q.shape
    head_dim = dim // n_heads
    heads_k = total_k.reshape(batch, -1, n_heads, head_dim)  # (b, P, H, dh)
    # products and sums, not einsum: einsum lowers these to batches of 1 x dh x P matmuls
    # behind permuting copies, 2.2x slower at batch 256 on CPU
    scores = (heads_k * q.reshape(batch, 1, n_heads, head_dim)).sum(-1)  # (b, P, H)
    scores = scores / (norm_k.unsqueeze(-1) * math.sqrt(head_dim))
    probs = torch.softmax(scores, dim=1) / norm_v.unsqueeze(-1)  # over the P interests
    return (total_v.reshape(batch, -1, n_heads, head_dim) * probs.unsqueeze(-1)).sum(1).reshape(batch, dim)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _lsa_step(q, key_x, value_x, logit_k, logit_v, top_k, norm_k, total_k, top_v, norm_v, total_v,
              n_heads, fast_exp, nblocks, ctx):  # pragma: no cover - compiled
    nb, dim = q.shape
    nint = top_k.shape[1]
    head_dim = dim // n_heads
    per_block = (nb + nblocks - 1) // nblocks
    for blk in prange(nblocks):
        # scratch once per block of rows, not per row; per-head work through (P, H, D/H) views,
        # which vectorise better than a head-range loop over a flat row of D
        arg = np.empty(nint, dtype=q.dtype)
        scale = np.empty(nint, dtype=q.dtype)
        weight = np.empty(nint, dtype=q.dtype)
        probs = np.empty((n_heads, nint), dtype=q.dtype)
        inv_sqrt = like(1.0 / math.sqrt(head_dim), q)
        one = like(1.0, q)
        for b in range(blk * per_block, min(nb, (blk + 1) * per_block)):
            pool_update(logit_k[b], key_x[b], top_k[b], norm_k[b], total_k[b], top_k[b], norm_k[b],
                        total_k[b], arg, scale, weight, fast_exp)
            pool_update(logit_v[b], value_x[b], top_v[b], norm_v[b], total_v[b], top_v[b], norm_v[b],
                        total_v[b], arg, scale, weight, fast_exp)
            qh = q[b].reshape(n_heads, head_dim)
            keys = total_k[b].reshape(nint, n_heads, head_dim)
            for p in range(nint):
                denom = inv_sqrt / norm_k[b, p]
                for h in range(n_heads):
                    acc = like(0.0, q)
                    for j in range(head_dim):
                        acc += keys[p, h, j] * qh[h, j]
                    probs[h, p] = acc * denom
            for h in range(n_heads):
                srow = probs[h]
                top = srow[0]
                for p in range(1, nint):
                    top = srow[p] if srow[p] > top else top
                for p in range(nint):
                    arg[p] = srow[p] - top
                exp_row(one, arg, srow, fast_exp)
                tot = like(0.0, q)
                for p in range(nint):
                    tot += srow[p]
                for p in range(nint):
                    srow[p] = srow[p] / (tot * norm_v[b, p])
            out = ctx[b].reshape(n_heads, head_dim)
            values = total_v[b].reshape(nint, n_heads, head_dim)
            for h in range(n_heads):
                for j in range(head_dim):
                    out[h, j] = 0
            for p in range(nint):
                for h in range(n_heads):
                    w = probs[h, p]
                    for j in range(head_dim):
                        out[h, j] += w * values[p, h, j]


def causal_lsa_step(q: torch.Tensor, key_x: torch.Tensor, value_x: torch.Tensor, logit_k: torch.Tensor,
                    logit_v: torch.Tensor, top_k: torch.Tensor, norm_k: torch.Tensor, total_k: torch.Tensor,
                    top_v: torch.Tensor, norm_v: torch.Tensor, total_v: torch.Tensor, n_heads: int,
                    backend: str = "auto") -> torch.Tensor:
    """Dispatch: the numba kernel when ``backend`` resolves to ``cpu``
    (:func:`recbole_mamba.ops.backend.resolve_backend`) for contiguous float32/float64 state and
    no gradient is needed, :func:`causal_lsa_step_ref` otherwise. Shapes in the module docstring;
    returns ctx (batch, D) in q's dtype and updates the six state tensors in place."""
    state = (top_k, norm_k, total_k, top_v, norm_v, total_v)
    batch, dim = q.shape
    nint = top_k.shape[-1]
    check_shapes("causal_lsa_step", {
        "key_x": (key_x, (batch, dim)), "value_x": (value_x, (batch, dim)),
        "logit_k": (logit_k, (batch, nint)), "logit_v": (logit_v, (batch, nint)),
        "top_k": (top_k, (batch, nint)), "norm_k": (norm_k, (batch, nint)),
        "total_k": (total_k, (batch, nint, dim)), "top_v": (top_v, (batch, nint)),
        "norm_v": (norm_v, (batch, nint)), "total_v": (total_v, (batch, nint, dim))},
        f"q is {tuple(q.shape)}, {nint} interests")
    if dim % n_heads:
        raise ValueError(f"causal_lsa_step: D={dim} is not a multiple of n_heads={n_heads}")
    chosen = resolve_backend(backend, q.device)
    if chosen != "cpu" or needs_grad(q, key_x, value_x, logit_k, logit_v, *state) or not fusable_state(*state):
        return causal_lsa_step_ref(q, key_x, value_x, logit_k, logit_v, *state, n_heads)
    dtype = top_k.dtype
    ctx = torch.empty((batch, dim), dtype=dtype)
    _lsa_step(as_numpy(q, dtype, 2), as_numpy(key_x, dtype, 2), as_numpy(value_x, dtype, 2),
              as_numpy(logit_k, dtype, 2), as_numpy(logit_v, dtype, 2),
              *(t.numpy() for t in state), int(n_heads), dtype == torch.float32,
              max(1, min(batch, 4 * numba.get_num_threads())), ctx.numpy())
    return ctx.to(q.dtype)
