"""Sparse updates of the item embedding: ``SparseAdam`` for it, RecBole's learner for the rest.

With a catalogue of millions of items, dense Adam reads and writes every row of the item table
(and both its moment tables) at every step, although a batch touches a few thousand rows: at 5M
items x 64 that is ~5 GB of memory traffic per step. Our models built with a sparse item
embedding (``sparse_item_embedding``, see
:func:`recbole_mamba.models.losses.sparse_embedding_wanted`) produce sparse
gradients for it; :func:`install` makes RecBole's ``Trainer._build_optimizer`` give those
parameters to ``torch.optim.SparseAdam`` (which updates only the rows a batch used: a lazy Adam)
and every other parameter to the learner the config names, through one
:class:`CombinedOptimizer` that RecBole's trainer, checkpoints and resume state use like one
optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ORIGINAL: dict[str, Any] = {}


class CombinedOptimizer:
    """Several torch optimizers stepped, zeroed, saved and restored as one.

    ``state_dict()`` is ``{"optimizers": [each one's state_dict]}``; ``param_groups`` lists every
    group of every optimizer (what RecBole and LR schedulers read)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for opt in self.optimizers for k, v in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers") if isinstance(state, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise ValueError("this checkpoint's optimizer state is not from a run with the same sparse/dense "
                             "parameter split (sparse_item_embedding); resume with the run's own config")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the model's embeddings built with ``sparse=True``."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


def _build_optimizer(self: Any, **kwargs: Any) -> Any:
    sparse = sparse_parameters(self.model)
    if not sparse or "params" in kwargs:
        return _ORIGINAL["_build_optimizer"](self, **kwargs)
    if self.enable_scaler:
        raise ValueError("sparse_item_embedding cannot be combined with enable_scaler (AMP's GradScaler steps one "
                         "torch optimizer); set sparse_item_embedding: False or enable_scaler: False")
    ids = {id(p) for p in sparse}
    dense = [p for p in self.model.parameters() if id(p) not in ids]
    lr = kwargs.get("learning_rate", self.learning_rate)
    optimizers = [torch.optim.SparseAdam(sparse, lr=lr)]
    if dense:
        optimizers.insert(0, _ORIGINAL["_build_optimizer"](self, params=dense, **kwargs))
    if (kwargs.get("weight_decay", self.weight_decay) or 0) > 0:
        self.logger.warning("weight_decay applies to the dense parameters only; SparseAdam (the item embedding) has none")
    self.logger.info(f"optimizer: SparseAdam for the item embedding ({sum(p.numel() for p in sparse):,} values, "
                     f"only the rows a batch uses), {self.learner} for the other {sum(p.numel() for p in dense):,}")
    return CombinedOptimizer(optimizers)


def install() -> None:
    """Patch RecBole's ``Trainer._build_optimizer`` (idempotent)."""
    from recbole.trainer.trainer import Trainer

    if _ORIGINAL:
        return
    _ORIGINAL["_build_optimizer"] = Trainer._build_optimizer
    Trainer._build_optimizer = _build_optimizer


__all__ = ["install", "CombinedOptimizer", "sparse_parameters"]
