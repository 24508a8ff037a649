"""``nn.Dropout`` with the CPU kernel of :mod:`recbole_mamba.ops.dropout_cpu` in training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mamba.ops import check_backend_name, dropout_cpu, runs_cpu_kernels


class Dropout(nn.Dropout):
    """Drop-in ``nn.Dropout``: (any shape) -> same shape.

    In training, when ``backend`` resolves to ``cpu`` (:mod:`recbole_mamba.ops.backend`) for a
    float32/float64 CPU tensor, with 0 < p < 1 and not in place, the mask comes from
    :func:`recbole_mamba.ops.dropout_cpu` (a counter-based hash, faster than torch's
    ``bernoulli_`` on CPU, docs/backends.md; same distribution, seeded from torch's generator). Everywhere else
    (eval, GPU, ``backend="reference"``, other dtypes, p = 0 or 1, ``inplace``) it is
    ``F.dropout``, as ``nn.Dropout``. No parameters or buffers, so state dicts are unchanged.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, backend: str = "auto") -> None:
        super().__init__(p, inplace)
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and 0.0 < self.p < 1.0 and not self.inplace
                and runs_cpu_kernels(self.backend, x)):
            return dropout_cpu(x, self.p)
        return F.dropout(x, self.p, self.training, self.inplace)
