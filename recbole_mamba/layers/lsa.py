"""Low-rank decomposed self-attention (LightSANs-style), as MLSA4Rec uses it.

Keys and values are compressed from L positions to ``k_interests`` latent interests by a learned
softmax pooling over positions (``ItemToInterestAggregation``); queries attend to the interests.
Cost O(L * P * D), linear in L (the causal form too, by chunks).

Two switches keep the authors' form reachable:

* ``causal`` (default ``True``): position t pools only positions <= t, so the output at t never
  sees later items or padding (needed for all-position training and for a padded batch). With
  ``False`` the pooling runs over all L positions, as the authors' code does (their last
  position then sees padding, and in all-position training the future).
* ``softmax_over``: ``"interests"`` (default; each query's weights over the P interests sum to 1,
  as the MLSA4Rec paper writes it) or ``"positions"`` (the authors' code,
  ``nn.Softmax(dim=-2)``: normalised over query positions, which mixes positions and is
  therefore only available with ``causal=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mamba.layers.dropout import Dropout
from recbole_mamba.layers.state import LayerState
from recbole_mamba.ops import causal_lsa, causal_lsa_step, check_backend_name, runs_cpu_kernels


#: the largest gap (in logits) between a prefix's max and the sequence's max for which the
#: causal pooling weights stay in float32. The bound is set by the backward, not the forward: a
#: prefix normaliser ~exp(-spread) is divided by, and torch's division backward forms
#: (numerator / norm) / norm ~ exp(2 * spread), which overflows float32 (3.4e38 ~ exp(88)) from a
#: spread of ~44: NaN gradients from a finite loss (seen in an ML-1M MLSA4Rec run at spreads of
#: 35-44 under the former bound of 60). exp(60) ~ 1e26 leaves 1e12 of headroom for the gradient.
FLOAT32_SAFE_SPREAD = 30.0
#: the same bound in float64 (max ~exp(709)): shifted logits are clamped here, finite but no
#: longer exact beyond it
FLOAT64_SAFE_SPREAD = 300.0
#: positions per block of the chunked causal form (fastest of 8/16/32/64 at L = 200 to 5000)
CAUSAL_CHUNK = 16


class InterestPooling(nn.Module):
    """Softmax pooling of L positions into P interests: (batch, L, D) -> (batch, [L,] P, D)."""

    def __init__(self, d_model: int, k_interests: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d_model, k_interests))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """x (batch, L, D); mask (batch, L) True at real positions.

        Non-causal: returns (batch, P, D), pooled over all (real, when masked) positions.
        Causal: returns (batch, L, P, D), row t pooled over positions <= t.
        """
        logits = x @ self.theta  # (batch, L, P)
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        if not causal:
            weights = torch.softmax(logits, dim=1)
            return torch.einsum("blp,bld->bpd", weights, x)
        w, norm = self._prefix(logits)
        num = torch.cumsum(w.unsqueeze(-1) * x.unsqueeze(2), dim=1)  # (batch, L, P, D), w's dtype
        return (num / norm.unsqueeze(-1)).to(x.dtype)

    @staticmethod
    def _prefix(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised prefix-softmax weights w (batch, L, P) and normalisers (batch, L, P).

        Shifted by the max over the (real) sequence for stability. The shift cancels exactly
        between numerator and normaliser, so row t depends on positions <= t only (up to float
        rounding). A prefix whose logits all lie far below the sequence's max (more than ~87 in
        float32, which trained models reach) would underflow to a zero normaliser and NaN
        gradients (and from a spread of ~44 the division backward overflows, see
        ``FLOAT32_SAFE_SPREAD``), so when some prefix's max lies more than ``FLOAT32_SAFE_SPREAD``
        below the shift, the weights are computed in float64 (exact for spreads up to
        ``FLOAT64_SAFE_SPREAD``; beyond that the shifted logits are clamped there: finite, no
        longer exact). Otherwise they stay in the logits' dtype, which is faster: on a batch of a
        trained MLSA4Rec (ML-1M, L=200, spreads 35-44) the float64 form cost ~8% more per
        training step. The callers compute in the weights' dtype and cast back.
        """
        shift = logits.detach().amax(dim=1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        if logits.dtype != torch.float64 and logits.numel():
            prefix_max = torch.cummax(logits.detach() - shift, dim=1).values
            lowest = prefix_max.masked_fill(~torch.isfinite(prefix_max), 0.0).amin()
            if float(lowest) < -FLOAT32_SAFE_SPREAD:
                logits, shift = logits.double(), shift.double()
        shifted = logits - shift
        shifted = torch.where(torch.isfinite(shifted), shifted.clamp_min(-FLOAT64_SAFE_SPREAD), shifted)
        w = torch.exp(shifted)  # 0 at padding (-inf)
        norm = torch.cumsum(w, dim=1).clamp_min(torch.finfo(w.dtype).tiny)
        return w, norm

    def logits(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (batch, L, D) -> pooling logits (batch, L, P), ``-inf`` where ``mask`` is False."""
        logits = x @ self.theta
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return logits

    def prefix_weights(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, L, D) -> (w, norm), both (batch, L, P): K'_t = sum_{s<=t} w_s x_s / norm_t."""
        return self._prefix(self.logits(x, mask))

    # ------------------------------------------------------------------ streaming (inference)
    def running_state(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The online-softmax sums of the causal pooling at each row's last real position.

        x (batch, L, D); mask (batch, L) True at real positions. Returns, in x's dtype,
        (max (batch, P), norm (batch, P), weighted sum (batch, P, D)) with
        ``pooled = sum / norm``; max is -inf for an empty row. :func:`recbole_mamba.ops.causal_lsa_step`
        adds one position. Shifted by the row's own max, every weight is <= 1 and the normaliser
        >= 1, so unlike the prefix form (one shift for all prefixes) this needs no float64.
        """
        logits = (x @ self.theta).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        top = logits.amax(dim=1)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(logits - safe.unsqueeze(1))
        return top, w.sum(dim=1), torch.einsum("blp,bld->bpd", w, x)


class LowRankSelfAttention(nn.Module):
    """MLSA4Rec's LSA block: (batch, L, D) -> LN(Dropout(ctx) + x), (batch, L, D)."""

    def __init__(self, d_model: int, n_heads: int, k_interests: int, hidden_dropout: float = 0.1,
                 attn_dropout: float = 0.1, layer_norm_eps: float = 1e-12, causal: bool = True,
                 softmax_over: str = "interests", backend: str = "auto") -> None:
        super().__init__()
        self.backend = check_backend_name(backend)
        if d_model % n_heads:
            raise ValueError(f"hidden_size ({d_model}) must be a multiple of n_heads ({n_heads})")
        if softmax_over not in ("interests", "positions"):
            raise ValueError(f"lsa softmax_over must be 'interests' or 'positions', got {softmax_over!r}")
        if causal and softmax_over == "positions":
            raise ValueError(
                "lsa softmax_over='positions' (the authors' code) normalises across query positions "
                "and cannot be causal; set lsa_causal: False to use it"
            )
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = causal
        self.softmax_over = softmax_over
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.pool_key = InterestPooling(d_model, k_interests)
        self.pool_value = InterestPooling(d_model, k_interests)
        self.attn_dropout = Dropout(attn_dropout, backend=backend)
        self.out_dropout = Dropout(hidden_dropout, backend=backend)
        self.LayerNorm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., H, D/H)."""
        return t.reshape(*t.shape[:-1], self.n_heads, self.head_dim)

    def _causal_by_chunks(self, q, key, value, mask, scale, chunk: int) -> torch.Tensor:
        """The causal form (:func:`recbole_mamba.ops.causal_lsa.causal_lsa_ref`) by chunks of
        ``chunk`` positions, as chunked linear attention does, never forming the (b, L, P, D)
        prefix-pooled keys and values.

        Through position pairs, ``q_t . K'_{t,p} = sum_{s<=t} w_{s,p} (q_t . k_s) / norm_{t,p}``
        and the context ``sum_p prob_{t,p} V'_{t,p} = sum_{s<=t} (sum_p prob_{t,p} w_{s,p} /
        norm_{t,p}) v_s`` (w, norm: :meth:`InterestPooling.prefix_weights`). Position t in chunk n
        sees positions s <= t through two parts: the earlier chunks, as the (P, D) pooled sums at
        chunk n's start (one exclusive cumsum over chunks), and its own chunk, as those pairs
        restricted to a (chunk x chunk) block. Memory and work are linear in L: (b, L, H,
        chunk + P) per layer plus (b, L / chunk, P, D) sums, where all pairs take (b, H, L, L)
        and the prefix-pooled form (b, L, P, D).
        """
        wk, nk = self.pool_key.prefix_weights(key, mask)  # (b, L, P) each
        wv, nv = self.pool_value.prefix_weights(value, mask)
        # in the pooling weights' dtype (float64 when needed, see InterestPooling._prefix),
        # results back in q's dtype
        dtype = wk.dtype
        b, length, heads, dh = q.shape
        nchunks = -(-length // chunk)
        pad = nchunks * chunk - length

        def blocks(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            """(b, L, ...) -> (b, n, chunk, ...), padded with ``fill`` up to n * chunk."""
            t = t.to(dtype)
            if pad:
                t = torch.cat([t, t.new_full((b, pad, *t.shape[2:]), fill)], dim=1)
            return t.reshape(b, nchunks, chunk, *t.shape[2:])

        qb = blocks(q)  # (b, n, c, H, dh)
        kb, vb = blocks(self._heads(key)), blocks(self._heads(value))
        wkb, wvb = blocks(wk), blocks(wv)  # (b, n, c, P); 0 at padding
        nkb, nvb = blocks(nk, 1.0), blocks(nv, 1.0)  # divisors: 1 at the block padding, so
        # its (discarded) outputs stay finite and send no NaN back through the division
        # pooled sums of every earlier chunk: exclusive cumsum over chunks, (b, n, P, H, dh)
        sums_k = torch.einsum("bncp,bnchd->bnphd", wkb, kb)
        sums_v = torch.einsum("bncp,bnchd->bnphd", wvb, vb)
        # shifted, not cumsum - sums: a late chunk's large weights would swamp a small prefix
        before_k = F.pad(torch.cumsum(sums_k[:, :-1], dim=1), (0, 0, 0, 0, 0, 0, 1, 0))
        before_v = F.pad(torch.cumsum(sums_v[:, :-1], dim=1), (0, 0, 0, 0, 0, 0, 1, 0))
        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        qh = qb.permute(0, 1, 3, 2, 4)  # (b, n, H, c, dh)
        kh, vh = kb.permute(0, 1, 3, 2, 4), vb.permute(0, 1, 3, 2, 4)
        qk = (qh @ kh.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (b, n, H, c, c)
        scores = qk @ wkb.unsqueeze(2)  # (b, n, H, c, P): this chunk's part
        scores = scores + torch.einsum("bnchd,bnphd->bnhcp", qb, before_k)
        scores = (scores / nkb.unsqueeze(2)).to(q.dtype) * scale
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        mix = probs.to(dtype) / nvb.unsqueeze(2)  # (b, n, H, c, P)
        ctx = torch.einsum("bnhcp,bnphd->bnchd", mix, before_v)
        local = (mix @ wvb.unsqueeze(2).transpose(-1, -2)).masked_fill(~causal, 0.0)  # (b, n, H, c, c)
        ctx = ctx + (local @ vh).permute(0, 1, 3, 2, 4)
        return ctx.reshape(b, nchunks * chunk, heads, dh)[:, :length].to(q.dtype)  # (b, L, H, dh)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, L, D); mask (batch, L) True at real positions (None: all real)."""
        scale = 1.0 / math.sqrt(self.head_dim)
        if self.causal and runs_cpu_kernels(self.backend, x, self.query.weight):
            # the fused kernel (recbole_mamba.ops.causal_lsa; its speed against the chunked
            # form below: docs/backends.md)
            key, value = self.key(x), self.value(x)
            drop = self.attn_dropout.p if self.training else 0.0
            ctx = causal_lsa(self.query(x), key, value, self.pool_key.logits(key, mask),
                             self.pool_value.logits(value, mask), self.n_heads, scale, drop)
            return self.LayerNorm(self.out_dropout(ctx) + x)
        q = self._heads(self.query(x))  # (b, L, H, dh)
        if self.causal:
            # the torch form off CPU (on CPU the fused kernel above runs); chunks of 16 were the
            # fastest of 8/16/32/64 and linear in L (docs/benchmarks.md)
            ctx = self._causal_by_chunks(q, self.key(x), self.value(x), mask, scale, CAUSAL_CHUNK)
        else:
            k = self._heads(self.pool_key(self.key(x), mask, False))  # (b, P, H, dh)
            v = self._heads(self.pool_value(self.value(x), mask, False))
            scores = torch.einsum("blhd,bphd->blhp", q, k) * scale
            dim = -1 if self.softmax_over == "interests" else 1
            probs = self.attn_dropout(torch.softmax(scores, dim=dim))
            ctx = torch.einsum("blhp,bphd->blhd", probs, v)
        ctx = ctx.reshape(x.shape)
        return self.LayerNorm(self.out_dropout(ctx) + x)

    # ------------------------------------------------------------------ streaming (inference)
    def _require_causal(self) -> None:
        if not self.causal:
            raise ValueError(
                "the non-causal low-rank attention (lsa_causal: False, the authors' form) pools over "
                "the whole sequence, so a new event changes every earlier position: it cannot be "
                "updated by a running state. Use a model trained with lsa_causal: True."
            )

    #: the names of the six running sums in this layer's state (key and value pooling)
    STATE_NAMES = ("key_max", "key_norm", "key_sum", "value_max", "value_norm", "value_sum")

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor | None,
                           mask: torch.Tensor) -> tuple[torch.Tensor, LayerState]:
        """Causal form only: x (batch, L, D), mask (batch, L) -> (out (batch, L, D), state).

        ``state`` holds the six running sums (key and value pooling, see
        :meth:`InterestPooling.running_state`) at each row's last real position, named
        :attr:`STATE_NAMES`; ``lengths`` is implied by ``mask``.
        """
        self._require_causal()
        sums = (*self.pool_key.running_state(self.key(x), mask),
                *self.pool_value.running_state(self.value(x), mask))
        return self.forward(x, mask), dict(zip(self.STATE_NAMES, sums))

    def step(self, x: torch.Tensor, state: LayerState, count: torch.Tensor | None = None) -> torch.Tensor:
        """One new position per row: x (batch, D) -> out (batch, D); O(P * D). The six running
        sums in ``state`` are updated in place (:func:`recbole_mamba.ops.causal_lsa_step`)."""
        self._require_causal()
        key_x, value_x = self.key(x), self.value(x)
        ctx = causal_lsa_step(self.query(x), key_x, value_x, key_x @ self.pool_key.theta,
                              value_x @ self.pool_value.theta, *(state[n] for n in self.STATE_NAMES),
                              self.n_heads, backend=self.backend)
        return self.LayerNorm(self.out_dropout(ctx) + x)
