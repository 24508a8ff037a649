"""The one way we replace a module RecBole imported (``pandas`` inside its dataset module,
``torch`` inside its trainer, ``pickle`` inside its data utils, ``ray.tune`` inside its quick
start): an object whose attributes are the module's own except those its class defines.

Rebinding the name inside one RecBole module changes that module's calls only; the real module
stays untouched for everyone else (tested: ``torch.load`` itself is unchanged).
"""

from __future__ import annotations

import importlib
from typing import Any


class ModuleStandIn:
    """Stands in for the module named by the subclass's ``module`` attribute."""

    module: str = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(type(self).module), name)


__all__ = ["ModuleStandIn"]
