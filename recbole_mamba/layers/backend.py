"""One ``mamba_backend`` for every layer of a model."""

from __future__ import annotations

from torch import nn

from recbole_mamba.ops import check_backend_name


def set_backend(module: nn.Module, backend: str) -> int:
    """Set ``backend`` on ``module`` and every submodule that has one (the layers of
    :mod:`recbole_mamba.layers`: Mamba, Dropout, LowRankSelfAttention), so that one decision,
    :func:`recbole_mamba.ops.backend.resolve_backend` of this name, picks the implementation of
    every op the module runs. Returns how many modules were set; ``ValueError`` for an unknown
    name."""
    check_backend_name(backend)
    count = 0
    for m in module.modules():
        if hasattr(m, "backend") and isinstance(getattr(m, "backend"), str):
            m.backend = backend
            count += 1
    return count
