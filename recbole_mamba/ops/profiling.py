"""Names for the custom kernels in ``torch.profiler`` tables.

torch records a custom ``autograd.Function``'s backward under its class name and its forward not
at all, so the time of a fused kernel's forward would hide in whatever op called it. Each
kernel's forward and backward are wrapped in ``torch.profiler.record_function`` under a
``recbole_mamba::`` name (``python -m recbole_mamba.bench --profile K`` prints them); with no
profiler running the wrapper costs one check per call.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def profiled(name: str) -> Callable[[F], F]:
    """Decorate a function so that its calls show in ``torch.profiler`` as ``recbole_mamba::name``."""
    label = f"recbole_mamba::{name}"

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap
