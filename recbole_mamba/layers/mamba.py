"""The Mamba-1 mixer, with mamba-ssm's constructor arguments and parameter names.

``Mamba`` here and ``mamba_ssm.modules.mamba_simple.Mamba`` have the same parameters
(``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``) with the same shapes and the same
initialisation, so a state dict moves between them both ways: train on a laptop CPU, serve
through mamba-ssm's CUDA kernels, and back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mamba.ops import (
    causal_conv1d_silu,
    causal_conv1d_update,
    check_backend_name,
    runs_cpu_kernels,
    selective_scan_fn,
    selective_state_update,
)


class Mamba(nn.Module):
    """Mamba-1 mixer: in_proj -> causal depthwise conv1d -> SiLU -> selective scan -> gate -> out_proj.

    Args follow ``mamba_ssm.modules.mamba_simple.Mamba``; ``use_fast_path`` is accepted and ignored (the
    backend decides the path), ``layer_idx`` is kept for compatibility. ``backend``
    (``auto|mamba_ssm|triton|cpu|reference``) picks the implementation of every op the layer runs
    (scan, conv, their one-step forms), resolved by :func:`recbole_mamba.ops.backend.resolve_backend`.

    Input (batch, L, d_model) -> output (batch, L, d_model). The mixer is causal: the output at
    position t depends on inputs at positions <= t only, so right-padding (RecBole's convention)
    never changes outputs at real positions.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        if d_model <= 0 or d_state <= 0 or d_conv <= 0 or expand <= 0:
            raise ValueError(
                f"Mamba: d_model, d_state, d_conv and expand must be positive, got "
                f"{d_model}, {d_state}, {d_conv}, {expand}"
            )
        if dt_init not in ("constant", "random"):
            raise ValueError(f"Mamba: dt_init must be 'constant' or 'random', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.backend = check_backend_name(backend)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
            padding=d_conv - 1, bias=conv_bias, **factory,
        )
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)

        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        A = A.repeat(self.d_inner, 1).contiguous()
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ------------------------------------------------------------------ full sequence
    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (batch, d_inner, L) after conv+SiLU -> (delta, B, C) as the scan wants them."""
        batch, _, length = x.shape
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * length, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).reshape(batch, length, self.d_inner).transpose(1, 2)
        B = B.reshape(batch, length, self.d_state).transpose(1, 2)
        C = C.reshape(batch, length, self.d_state).transpose(1, 2)
        return delta, B, C

    def _check_input(self, hidden_states: torch.Tensor) -> None:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba expects (batch, L, d_model={self.d_model}), got {tuple(hidden_states.shape)}"
            )

    def _uses_cpu_kernels(self, hidden_states: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs the CPU kernels end to end in (batch, L, channels)."""
        return runs_cpu_kernels(self.backend, hidden_states, self.in_proj.weight, self.conv1d.weight)

    def _forward_cpu_kernels(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The CPU forward: (batch, L, d_model) -> (batch, L, d_model), every tensor channels-last.

        Same function as the general path; the difference is layout. in_proj runs as two linear
        maps (its x and z halves: contiguous (batch, L, d_inner) each, where slicing one output
        would leave strided halves), the conv + SiLU is our channels-last kernel, x_proj reads
        its output without a transpose, and the scan gets transposed views of contiguous
        (batch, L, d_inner) tensors, which its CPU kernels read without a copy. The general path's
        layout would cost a transpose of in_proj's output for torch's conv1d and a copy back for
        the CPU scan, in forward and backward.
        """
        d_inner = self.d_inner
        w, b = self.in_proj.weight, self.in_proj.bias
        x = F.linear(hidden_states, w[:d_inner], None if b is None else b[:d_inner])
        z = F.linear(hidden_states, w[d_inner:], None if b is None else b[d_inner:])
        u = causal_conv1d_silu(x, self.conv1d.weight[:, 0, :], self.conv1d.bias, backend=self.backend)  # (batch, L, d_inner)
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # (batch, L, d_inner)
        A = -torch.exp(self.A_log.float())
        y = selective_scan_fn(
            u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
            self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model)."""
        self._check_input(hidden_states)
        if self._uses_cpu_kernels(hidden_states):
            return self._forward_cpu_kernels(hidden_states)
        return self._forward_general(hidden_states)

    def _forward_general(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The general forward (any device, any backend): mamba-ssm's (batch, channels, L) layout."""
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :length])
        delta, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        y = selective_scan_fn(
            x, delta, A, B, C, self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def forward_with_state(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full forward that also returns the :meth:`step` states at each sequence's own end.

        hidden_states (batch, L, d_model), right-padded; lengths (batch,) real positions per row
        (0 <= length <= L). Returns (out (batch, L, d_model), conv_state (batch, d_inner, d_conv),
        ssm_state (batch, d_inner, d_state)): the states after position ``length - 1`` (zeros
        for length 0), so ``step`` on the next input continues each sequence exactly. Outputs at
        real positions equal :meth:`forward`'s; at padding they are not meaningful (the scan
        holds the state still there, by a zero time step).
        """
        self._check_input(hidden_states)
        batch, length, _ = hidden_states.shape
        lengths = lengths.to(device=hidden_states.device, dtype=torch.long)
        if lengths.shape != (batch,) or bool((lengths < 0).any()) or bool((lengths > length).any()):
            raise ValueError(f"Mamba.forward_with_state: lengths must be (batch,) in [0, {length}]")
        xz = self.in_proj(hidden_states).transpose(1, 2)
        x_in, z = xz.chunk(2, dim=1)
        # conv_state = the last d_conv conv inputs before each row's end, zero on the left
        padded = F.pad(x_in, (self.d_conv, 0))  # original position p sits at p + d_conv
        idx = lengths.view(batch, 1, 1) + torch.arange(self.d_conv, device=x_in.device).view(1, 1, -1)
        conv_state = padded.gather(2, idx.expand(batch, self.d_inner, self.d_conv)).contiguous()
        x = self.act(self.conv1d(x_in)[..., :length])
        delta, B, C = self._ssm_inputs(x)
        # softplus here instead of in the scan, so a zero step at padding freezes the state there
        delta = F.softplus(delta.float() + self.dt_proj.bias.float().unsqueeze(-1))
        real = torch.arange(length, device=x.device).view(1, 1, -1) < lengths.view(batch, 1, 1)
        delta = delta * real
        A = -torch.exp(self.A_log.float())
        y, ssm_state = selective_scan_fn(
            x, delta.to(x.dtype), A, B, C, self.D.float(), z=z, delta_bias=None,
            delta_softplus=False, return_last_state=True, backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2)), conv_state, ssm_state

    # ------------------------------------------------------------------ one step
    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states for :meth:`step`: conv_state (batch, d_inner, d_conv) and
        ssm_state (batch, d_inner, d_state), as mamba-ssm allocates them."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                                 dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                dtype=ssm_dtype)
        return conv_state, ssm_state

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new position per sequence: hidden_states (batch, 1, d_model) ->
        (out (batch, 1, d_model), conv_state, ssm_state); the states are updated in place."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"Mamba.step expects (batch, 1, d_model), got {tuple(hidden_states.shape)}")
        xz = self.in_proj(hidden_states.squeeze(1))
        x, z = xz.chunk(2, dim=-1)
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                 silu=True, backend=self.backend).to(hidden_states.dtype)
        x_db = self.x_proj(x)
        dt, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(
            ssm_state, x, dt, A, B, C, self.D.float(), z=z, dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True, backend=self.backend,
        )
        return self.out_proj(y.to(hidden_states.dtype)).unsqueeze(1), conv_state, ssm_state
