"""``nn.Dropout`` with the CPU kernel of :mod:`recbole_mamba.ops.dropout_cpu` in training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mamba.ops import CPU_DTYPES, dropout_cpu


class Dropout(nn.Dropout):
    """Drop-in ``nn.Dropout``: (any shape) -> same shape.

    In training, on a CPU float32/float64 tensor with 0 < p < 1 and not in place, the mask comes
    from :func:`recbole_mamba.ops.dropout_cpu` (a counter-based hash, ~8x faster than torch's
    ``bernoulli_`` on CPU; same distribution, seeded from torch's generator). Everywhere else
    (eval, GPU, other dtypes, p = 0 or 1, ``inplace``) it is ``F.dropout``, as ``nn.Dropout``.
    No parameters or buffers, so state dicts are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and 0.0 < self.p < 1.0 and not self.inplace
                and x.device.type == "cpu" and x.dtype in CPU_DTYPES):
            return dropout_cpu(x, self.p)
        return F.dropout(x, self.p, self.training, self.inplace)
