"""The one online-state protocol of the layers (what ``init_state`` / ``update_state`` build on).

A stateful layer has two methods besides ``forward``:

* ``forward_with_state(x, lengths, mask) -> (out, state)``: x (batch, L, D) right-padded,
  lengths (batch,) real positions per row, mask (batch, L) True at real positions; ``out`` as
  ``forward``'s and ``state`` the layer's state after each row's last real position;
* ``step(x, state, count) -> out``: x (batch, D) the input at position ``count`` (batch,) of each
  row -> out (batch, D); ``state`` is updated in place.

``state`` is a :data:`LayerState`: named, batch-first tensors that the layer owns (it may replace
an entry, as a key/value cache does when it grows). A layer made of stateful layers keeps each
child's state under its own prefix (:func:`prefixed` when building, :class:`SubState` when
stepping), so a model's whole state is one flat dict (``UserState.tensors``) that can be sliced
by user, moved and concatenated without knowing the layers.

The Mamba mixer (:class:`~recbole_mamba.layers.Mamba`) keeps mamba-ssm's own one-step API
(``allocate_inference_cache``, ``step(hidden_states, conv_state, ssm_state)``, so code written for
mamba-ssm runs on it); :class:`~recbole_mamba.layers.MambaBlock` is its form in this protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Protocol

import torch

LayerState = MutableMapping[str, torch.Tensor]
"""Named batch-first tensors of one layer's online state."""


class StatefulLayer(Protocol):
    """What every stateful layer implements (see the module docstring)."""

    def forward_with_state(self, x: torch.Tensor, lengths: torch.Tensor,
                           mask: torch.Tensor) -> tuple[torch.Tensor, LayerState]: ...

    def step(self, x: torch.Tensor, state: LayerState, count: torch.Tensor) -> torch.Tensor: ...


def prefixed(prefix: str, state: LayerState) -> dict[str, torch.Tensor]:
    """``state`` with every name prefixed: a child's state inside its parent's."""
    return {prefix + name: t for name, t in state.items()}


class SubState(MutableMapping):
    """The entries of ``parent`` under ``prefix``, by their short names; reads and writes go to
    ``parent`` (a child that replaces an entry, e.g. a grown cache, replaces it there)."""

    def __init__(self, parent: MutableMapping[str, torch.Tensor], prefix: str) -> None:
        self.parent = parent
        self.prefix = prefix

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.parent[self.prefix + name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.parent[self.prefix + name] = value

    def __delitem__(self, name: str) -> None:
        del self.parent[self.prefix + name]

    def __iter__(self) -> Iterator[str]:
        n = len(self.prefix)
        return (k[n:] for k in list(self.parent) if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def stack_with_state(layers: Iterable[StatefulLayer], x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor,
                     prefix: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``layers`` (stateful, in order) with state: layer i's state under ``f"{prefix}{i}."``."""
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        x, child = layer.forward_with_state(x, lengths, mask)
        state.update(prefixed(f"{prefix}{i}.", child))
    return x, state


def stack_step(layers: Iterable[StatefulLayer], x: torch.Tensor, state: LayerState, count: torch.Tensor,
               prefix: str = "") -> torch.Tensor:
    """One position through ``layers``, each reading and updating its part of ``state``."""
    for i, layer in enumerate(layers):
        x = layer.step(x, SubState(state, f"{prefix}{i}."), count)
    return x
