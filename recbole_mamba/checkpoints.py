"""Checkpoints that survive a kill, and resuming a killed RecBole training run.

After :func:`install` (run by ``import recbole_mamba``), RecBole's ``Trainer``:

* writes every checkpoint atomically (:func:`atomic_torch_save`): a temporary file beside the
  target, flushed and fsynced, then renamed over it, and the folder fsynced. A kill at any moment
  leaves either the previous best model or the new one, never a truncated file. Temporaries left
  by killed runs are removed by the next save into the same folder.
* after each evaluated epoch, writes the run's **resume state** to ``<best checkpoint>.resume``
  (same atomic write): the model, optimizer, epoch, early-stopping counters, best validation
  result, the path of the best checkpoint and every random generator the training loop draws from
  (torch, CUDA, NumPy, Python, the train dataloader's shuffling generator). It is deleted when
  ``fit`` returns.
* resumes when the config holds ``resume_from: <path of a .resume file>``: training continues at
  the next epoch with exactly the state the killed run had, so it ends with the same metrics as an
  uninterrupted run with the same seed (``run_recbole.py --resume`` finds the newest state).

RecBole's own ``resume_checkpoint`` restarts from the *best* checkpoint (the only one it writes)
and restores no random state, so it cannot continue a run exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset_prep.common import remove_stale_temporaries

RESUME_SUFFIX = ".resume"
_ORIGINAL: dict[str, Any] = {}


def atomic_torch_save(obj: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``torch.save(obj, path, **kwargs)`` that replaces ``path`` only once the new file is
    complete on disk (temporary file in the same folder, fsync, rename, fsync of the folder)."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def resume_path(saved_model_file: str | os.PathLike) -> Path:
    """Where the resume state of the run whose best checkpoint is ``saved_model_file`` lives."""
    return Path(f"{saved_model_file}{RESUME_SUFFIX}")


def newest_resume_state(checkpoint_dir: str | os.PathLike, model: str) -> Path | None:
    """The most recent ``<model>-*.pth.resume`` in ``checkpoint_dir``, if any."""
    found = list(Path(checkpoint_dir).glob(f"{model}-*.pth{RESUME_SUFFIX}"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _is_writer(trainer: Any) -> bool:
    return trainer.config["single_spec"] or trainer.config["local_rank"] == 0


def _distributed(trainer: Any) -> bool:
    return not trainer.config["single_spec"] and torch.distributed.is_available() and torch.distributed.is_initialized()


def _save_checkpoint(self: Any, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
    """RecBole's ``Trainer._save_checkpoint`` (same content) written atomically. Under DDP, rank 0
    writes and every rank waits for the file (all ranks save at the same epochs: their validation
    results are reduced across ranks), so no rank reads a best model that is not there yet."""
    if not _is_writer(self):
        if _distributed(self):
            torch.distributed.barrier()
        return
    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    state = {
        "config": self.config,
        "epoch": epoch,
        "cur_step": self.cur_step,
        "best_valid_score": self.best_valid_score,
        "state_dict": self.model.state_dict(),
        "other_parameter": self.model.other_parameter(),
        "optimizer": self.optimizer.state_dict(),
    }
    atomic_torch_save(state, saved_model_file, pickle_protocol=4)
    if verbose:
        from recbole.utils import set_color

        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")
    if _distributed(self):
        torch.distributed.barrier()


def _rng_state(train_data: Any) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "train_generator": train_data.generator.get_state() if getattr(train_data, "generator", None) is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, train_data: Any) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("train_generator") is not None and getattr(train_data, "generator", None) is not None:
        train_data.generator.set_state(state["train_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_resume_state(trainer: Any, epoch: int, train_data: Any) -> None:
    state = {
        "config": trainer.config,
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": trainer.best_valid_score,
        "best_valid_result": dict(trainer.best_valid_result) if trainer.best_valid_result is not None else None,
        "train_loss_dict": dict(trainer.train_loss_dict),
        "saved_model_file": str(trainer.saved_model_file),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": _rng_state(train_data),
    }
    atomic_torch_save(state, resume_path(trainer.saved_model_file), pickle_protocol=4)


def load_resume_state(path: str | os.PathLike, device: Any = "cpu") -> dict:
    """Read a resume state (restricted unpickler); ``ValueError`` if it is not one."""
    from recbole_mamba.safe_load import load_recbole_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resume state {path} does not exist")
    state = load_recbole_checkpoint(path, map_location=device)
    if not isinstance(state, dict) or "rng" not in state or "saved_model_file" not in state:
        raise ValueError(f"{path} is not a recbole_mamba resume state (a {RESUME_SUFFIX} file written during training)")
    return state


def _restore(trainer: Any, path: str | os.PathLike, train_data: Any) -> None:
    state = load_resume_state(path, trainer.device)
    old = state["config"]
    for key in ("model", "dataset"):
        if str(old[key]) != str(trainer.config[key]):
            raise ValueError(
                f"resume state {path} is of {key} {old[key]!r}, this run is {trainer.config[key]!r}; "
                "resume with the command that started the run"
            )
    trainer.model.load_state_dict(state["state_dict"])
    trainer.model.load_other_parameter(state.get("other_parameter"))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    trainer.train_loss_dict = dict(state["train_loss_dict"])
    trainer.saved_model_file = state["saved_model_file"]
    if not Path(trainer.saved_model_file).is_file():
        raise ValueError(f"resume state {path} names best checkpoint {trainer.saved_model_file}, which is missing")
    _set_rng_state(state["rng"], train_data)
    trainer.logger.info(f"Resumed from {path}: training continues at epoch {trainer.start_epoch}")


#: the best-model checkpoints that ``Trainer.fit`` wrote in this process, in order (what
#: ``run_recbole.py`` prints: the run's own file, even when other runs share checkpoint_dir)
FITTED_CHECKPOINTS: list[str] = []


def _fit(self: Any, train_data: Any, valid_data: Any = None, verbose: bool = True, saved: bool = True,
         show_progress: bool = False, callback_fn: Any = None) -> Any:
    """RecBole's ``Trainer.fit`` that resumes from ``config['resume_from']`` and writes the resume
    state after each evaluated epoch."""
    if _distributed(self):  # one file name for all ranks: rank 0's (names hold the second they were made)
        names = [str(self.saved_model_file)]
        torch.distributed.broadcast_object_list(names, src=0)
        self.saved_model_file = names[0]
    resume_from = self.config["resume_from"] if "resume_from" in self.config else None
    if resume_from:
        _restore(self, resume_from, train_data)

    def callback(epoch_idx: int, valid_score: float) -> None:
        if saved and _is_writer(self):
            _write_resume_state(self, epoch_idx, train_data)
        if callback_fn is not None:
            callback_fn(epoch_idx, valid_score)

    result = _ORIGINAL["fit"](self, train_data, valid_data, verbose, saved, show_progress, callback)
    if saved and _is_writer(self):
        with contextlib.suppress(FileNotFoundError):
            resume_path(self.saved_model_file).unlink()
        FITTED_CHECKPOINTS.append(str(self.saved_model_file))
    return result


def install() -> None:
    """Patch RecBole's ``Trainer`` (idempotent)."""
    from recbole.trainer.trainer import Trainer

    if "fit" in _ORIGINAL:
        return
    _ORIGINAL["fit"] = Trainer.fit
    Trainer.fit = _fit
    Trainer._save_checkpoint = _save_checkpoint


__all__ = ["install", "FITTED_CHECKPOINTS", "atomic_torch_save", "remove_stale_temporaries", "resume_path",
           "newest_resume_state", "load_resume_state", "RESUME_SUFFIX"]
