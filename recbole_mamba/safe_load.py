"""Unpickling that runs no code from the file: RecBole checkpoints and RecBole's cache files.

RecBole 1.2.1 pickles whole objects: every checkpoint holds its ``Config`` (enums, a
``torch.device``, the model class), and its dataset and dataloader caches
(``<checkpoint_dir>/<dataset>-<DatasetClass>.pth``, ``<dataset>-for-<model>-dataloader.pth``, or
the paths in ``dataset_save_path`` / ``dataloaders_save_path``) hold pandas frames, samplers and
dataloaders. It reads the caches with plain ``pickle.load`` whenever they exist, so a planted
file, or a checkpoint whose config names one, would run arbitrary code.

Every such read goes through :class:`RestrictedUnpickler`. It differs from ``pickle.Unpickler`` in
two places:

* ``find_class`` resolves only the globals that genuine RecBole files hold (listed below, plus
  torch's own weights-only allow-list and ``torch.serialization.add_safe_globals`` entries);
* the ``REDUCE`` opcode (a call) is allowed only on value constructors and reconstruction
  functions (``OrderedDict``, ``numpy.dtype``, torch's tensor rebuilders, pandas' block and index
  rebuilders, enum classes). Classes such as ``Config``, datasets, dataloaders and models may
  appear in the file, but only as the type of an object restored by ``__new__`` + ``__setstate__``
  (what ``pickle`` itself writes for them); calling their constructors with arguments from the
  file is refused, since a constructor may read or download files.

``torch.storage._load_from_bytes`` (how a tensor pickled by plain ``pickle`` stores its data) is
replaced by a version that loads those bytes with ``torch.load(weights_only=True)``; torch's own
would unpickle them without restriction.

The unpickler is pickle's pure-Python ``_Unpickler`` (the C one offers no hook on single opcodes):
about 5x slower than ``pickle.load``, a few seconds for a 10 MB dataloader cache.
"""

from __future__ import annotations

import enum
import io
import os
import pickle
from typing import Any

import numpy as np
import torch

from recbole_mamba.standin import ModuleStandIn

# Globals that may be called (REDUCE) while loading: value types and reconstruction functions.
_CALLABLE_NAMES = {
    "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.bytearray",
    "builtins.complex",
    "collections.OrderedDict",
    "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "torch.device",
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch.storage.UntypedStorage",
    "logging.getLogger",
    "pandas.StringDtype", "pandas.core.arrays.string_.StringDtype",
    "pandas._libs.internals._unpickle_block",
    "pandas.core.indexes.base._new_Index",
    "pandas.core.internals.managers.BlockManager",
    "pyarrow.lib._restore_array", "pyarrow.lib.py_buffer", "pyarrow.lib.type_for_alias",
}
# Globals that may only appear as the type of an object restored without its constructor.
_TYPE_NAMES_CHECKPOINT = {
    "recbole.config.configurator.Config",
    "yaml.loader.FullLoader",
}
_TYPE_NAMES_CACHE = {
    "pandas.DataFrame", "pandas.core.frame.DataFrame",
    "pandas.Index", "pandas.core.indexes.base.Index",
    "pandas.RangeIndex", "pandas.core.indexes.range.RangeIndex",
    "pandas.arrays.ArrowStringArray", "pandas.core.arrays.string_arrow.ArrowStringArray",
    "torch.utils.data.sampler.BatchSampler", "torch.utils.data.sampler.RandomSampler",
    "torch.utils.data.sampler.SequentialSampler",
}
# Modules whose classes (subclasses of RecBole's dataset / dataloader / sampler / transform
# bases, and Interaction) may appear in a cache as object types.
_RECBOLE_DATA_MODULES = ("recbole.data.", "recbole.sampler.")

_EXTRA_TYPES: set[str] = set()


def allow_class(cls: type) -> None:
    """Accept ``cls`` as an object type in checkpoints and caches (its constructor is never
    called). The registry calls this for our models and dataset classes."""
    _EXTRA_TYPES.add(f"{cls.__module__}.{cls.__qualname__}")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _is_recbole_model(module: str, name: str) -> bool:
    """``module.name`` is one of RecBole's own model classes. A checkpoint's Config names its model
    class; in a fresh process nothing has resolved RecBole's models yet, so they are checked
    here. Importing a module of the installed recbole package runs no code from the file."""
    if not module.startswith("recbole.model."):
        return False
    import importlib

    from recbole.model.abstract_recommender import AbstractRecommender

    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(obj, type) and issubclass(obj, AbstractRecommender)


def _is_recbole_data_class(module: str, name: str) -> bool:
    """A class of RecBole's data package: dataset, dataloader, sampler, transform, Interaction."""
    if not module.startswith(_RECBOLE_DATA_MODULES):
        return False
    import importlib

    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(obj, type)


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint (truncated, empty, another format)."""


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle`` unpickler that imports only allow-listed globals and calls only value
    constructors (see the module docstring). ``what`` is ``"checkpoint"`` or ``"cache"``; ``source``
    names the file in error messages."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, what: str = "checkpoint", source: str | None = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.what = what
        self.source = source or getattr(file, "name", None) or "<stream>"

    def _refuse(self, detail: str) -> pickle.UnpicklingError:
        if self.what == "cache":
            hint = ("It is a RecBole cache file: delete it and RecBole rebuilds it from the "
                    "dataset's atomic files.")
        else:
            hint = ("If you trust the file and it holds a custom class, allow it with "
                    "recbole_mamba.safe_load.allow_class(cls) or torch.serialization.add_safe_globals([cls]).")
        return pickle.UnpicklingError(
            f"{self.source}: refusing {detail}: it is not what a RecBole {self.what} holds, and "
            f"loading it could run code from the file. {hint}"
        )

    def find_class(self, module: str, name: str) -> Any:
        from torch._weights_only_unpickler import _get_allowed_globals

        full = f"{module}.{name}"
        if full == "torch.storage._load_from_bytes":
            return self._load_storage_bytes
        if full == "builtins.getattr" and self.what == "cache":
            return self._dataloader_getattr
        allowed = (
            full in _CALLABLE_NAMES
            or full in _TYPE_NAMES_CHECKPOINT
            or full in _EXTRA_TYPES
            or full in _get_allowed_globals()
            or any(_qualname(g) == full for g in torch.serialization.get_safe_globals())
            or _is_recbole_model(module, name)
            or (module == "recbole.utils.enum_type")
            or (module == "numpy.dtypes" and name.endswith("DType"))
            or (self.what == "cache" and (full in _TYPE_NAMES_CACHE or _is_recbole_data_class(module, name)))
        )
        if not allowed:
            raise self._refuse(f"global {full!r}")
        return super().find_class(module, name)

    def _load_storage_bytes(self, b: bytes) -> Any:
        """``torch.storage._load_from_bytes`` with ``weights_only=True``."""
        try:
            return torch.load(io.BytesIO(b), weights_only=True)
        except pickle.UnpicklingError as exc:
            last = [line for line in str(exc).splitlines() if line.strip()]
            raise self._refuse(f"a tensor storage torch's weights-only loader refuses ({last[-2] if len(last) > 1 else exc})") from None

    def _dataloader_getattr(self, obj: Any, name: str, *default: Any) -> Any:
        """``getattr`` as pickle uses it for bound methods (a RecBole dataloader's ``collate_fn``):
        methods of RecBole dataloaders only, never dunder attributes."""
        from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

        if isinstance(obj, AbstractDataLoader) and not name.startswith("__"):
            value = getattr(obj, name, *default)
            if callable(value):
                return value
        raise self._refuse(f"getattr({type(obj).__name__}, {name!r}) (only dataloader methods are accepted)")

    def _callable_ok(self, func: Any) -> bool:
        if getattr(func, "__self__", None) is self:
            return True
        if isinstance(func, type) and issubclass(func, enum.Enum):
            return True
        if isinstance(func, type) and issubclass(func, np.dtype):
            return True
        full = _qualname(func)
        if full in _CALLABLE_NAMES:
            return True
        from torch._weights_only_unpickler import _get_allowed_globals

        if any(func is g for g in _get_allowed_globals().values()):
            return True
        return any(func is g for g in torch.serialization.get_safe_globals())

    def load_reduce(self) -> None:
        func = self.stack[-2]
        if not self._callable_ok(func):
            raise self._refuse(f"to call {_qualname(func) or func!r}")
        pickle._Unpickler.load_reduce(self)

    dispatch[pickle.REDUCE[0]] = load_reduce


class _RestrictedPickleModule(ModuleStandIn):
    """A ``pickle_module`` for ``torch.load`` that uses :class:`RestrictedUnpickler`."""

    module = "pickle"
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def load_recbole_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict:
    """Load a RecBole checkpoint (``{'config', 'state_dict', ...}``) without running code from it.

    ``weights_only`` cannot read RecBole's protocol-4 pickles (torch's weights-only unpickler
    rejects their FRAME opcode), so ``torch.load`` gets :class:`RestrictedUnpickler` instead.
    Raises ``pickle.UnpicklingError`` naming the file and the refused global.
    """

    class _Named(RestrictedUnpickler):
        def __init__(self, file: Any, **kwargs: Any):
            super().__init__(file, what="checkpoint", source=str(path), **kwargs)

    class _Module(_RestrictedPickleModule):
        Unpickler = _Named

    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_Module())
    except (pickle.UnpicklingError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # truncated, empty or foreign file: torch's errors name neither
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {exc}); "
                              "is it a complete .pth written by RecBole?") from None


def load_recbole_cache(file: Any) -> Any:
    """``pickle.load`` for RecBole's dataset and dataloader cache files (an open binary file)."""
    return RestrictedUnpickler(file, what="cache").load()


class PickleForRecBoleData(ModuleStandIn):
    """Stands in for ``pickle`` inside ``recbole.data.utils``: ``load`` is
    :func:`load_recbole_cache`; ``dump`` and the rest are pickle's own."""

    module = "pickle"

    @staticmethod
    def load(file: Any, **_: Any) -> Any:
        return load_recbole_cache(file)


__all__ = ["CheckpointError", "RestrictedUnpickler", "load_recbole_checkpoint", "load_recbole_cache", "allow_class",
           "PickleForRecBoleData"]
