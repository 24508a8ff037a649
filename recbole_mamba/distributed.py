"""RecBole's distributed training (``run_recbole.py --nproc=N``) on CPUs as well as GPUs.

RecBole 1.2.1 starts every process group with NCCL, calls ``torch.cuda.set_device`` and wraps the
model in ``DistributedDataParallel(device_ids=[local_rank])``, so ``--nproc`` needs one GPU per
process. After :func:`install` (run by ``import recbole_mamba``):

* the backend is NCCL when the run uses CUDA (as in RecBole) and gloo otherwise; ``dist_backend``
  in the config overrides the choice;
* on CPU, DDP wraps the model without ``device_ids`` (what torch requires for CPU modules);
* evaluation is exact: every rank ranks every validation / test user (RecBole's sharded
  evaluation pads ranks with repeated users and averages per-rank metrics);
* a busy port, a rank that never joins (``dist_timeout`` seconds, default 300) and more processes
  than GPUs give one-line errors instead of NCCL tracebacks.

Everything else is RecBole's own: ``--nproc``, ``--ip``, ``--port``, ``--world_size`` and
``--group_offset`` for several nodes, ``DistributedSampler`` sharding of the training rows (our
all-position windows included: each window is trained once per epoch across all ranks), and
logging and checkpoints from rank 0.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch

_ORIGINAL: dict[str, Any] = {}


class DistributedSetupError(RuntimeError):
    """A process group that cannot be formed as configured."""


def _uses_cuda(final: dict) -> bool:
    return bool(final.get("use_gpu", True)) and torch.cuda.is_available() and len(str(final.get("gpu_id", ""))) > 0


def _init_device(self: Any) -> None:
    """``Config._init_device`` with gloo on CPU (RecBole's own for NCCL)."""
    final = self.final_config_dict
    if "local_rank" not in final:
        return _ORIGINAL["init_device"](self)
    backend = final.get("dist_backend") or ("nccl" if _uses_cuda(final) else "gloo")
    if backend not in ("nccl", "gloo"):
        raise DistributedSetupError(f"dist_backend must be nccl or gloo, got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedSetupError("dist_backend nccl needs CUDA GPUs; this machine has none (use gloo)")
        if torch.cuda.device_count() < final["nproc"]:
            raise DistributedSetupError(
                f"--nproc={final['nproc']} with NCCL needs one GPU per process; {torch.cuda.device_count()} "
                "visible (set --nproc to the GPU count, or --use_gpu=False for gloo on CPU)")
        return _ORIGINAL["init_device"](self)
    final["gpu_id"] = str(final.get("gpu_id", ""))
    rank = final["local_rank"] + final["offset"]
    address = f"{final['ip']}:{final['port']}"
    timeout = datetime.timedelta(seconds=float(final.get("dist_timeout") or 300))
    try:
        torch.distributed.init_process_group(backend="gloo", rank=rank, world_size=final["world_size"],
                                             init_method=f"tcp://{address}", timeout=timeout)
    except RuntimeError as exc:
        text = str(exc)
        if "address already in use" in text.lower() or "EADDRINUSE" in text:
            raise DistributedSetupError(f"--port {final['port']}: the port on {final['ip']} is in use; pick another "
                                        "--port") from None
        if "timed out" in text.lower() or "timeout" in text.lower():
            raise DistributedSetupError(
                f"rank {rank}: the process group at {address} did not form within {timeout.seconds} s "
                f"(world_size {final['world_size']}: did every node start, with the same --ip/--port?)") from None
        raise
    final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def _trainer_init(self: Any, config: Any, model: Any) -> None:
    """``AbstractTrainer.__init__``: on CPU, DDP without ``device_ids``."""
    if config["single_spec"] or config["device"].type == "cuda":
        return _ORIGINAL["trainer_init"](self, config, model)
    from torch.nn.parallel import DistributedDataParallel

    self.config = config
    self.model = model
    self.distributed_model = DistributedDataParallel(self.model)


def _unsharded(original_init: Any) -> Any:
    """An evaluation dataloader's ``__init__`` that never shards: each rank ranks every user.

    RecBole shards evaluation with ``DistributedSampler``, which pads the ranks with repeated
    users, then averages per-rank metrics weighted by those padded counts, so its validation and
    test metrics under DDP are not those of the model. Unsharded, every rank computes the exact
    metrics (RecBole's reduction of equal values returns them unchanged); evaluation costs each
    rank what it costs one process, a small share of an epoch."""

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        spec = config["single_spec"]
        config.final_config_dict["single_spec"] = True
        try:
            original_init(self, config, *args, **kwargs)
        finally:
            config.final_config_dict["single_spec"] = spec

    return __init__


def install() -> None:
    """Patch RecBole's ``Config._init_device``, ``AbstractTrainer.__init__`` and its evaluation
    dataloaders (idempotent)."""
    from recbole.config.configurator import Config
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader
    from recbole.trainer.trainer import AbstractTrainer

    if "init_device" in _ORIGINAL:
        return
    _ORIGINAL["init_device"] = Config._init_device
    _ORIGINAL["trainer_init"] = AbstractTrainer.__init__
    Config._init_device = _init_device
    AbstractTrainer.__init__ = _trainer_init
    for cls in (FullSortEvalDataLoader, NegSampleEvalDataLoader):
        cls.__init__ = _unsharded(cls.__init__)


__all__ = ["install", "DistributedSetupError"]
