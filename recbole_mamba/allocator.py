"""Freed memory kept for reuse by glibc's malloc on CPU (``keep_freed_memory``, on by default).

A training step on the CPU allocates and frees the same large activation and gradient buffers
every step. glibc serves a block above its mmap threshold (adaptive, at most 32 MiB on 64-bit)
with a fresh ``mmap`` and returns it with ``munmap`` when freed, so every step touches its large
buffers for the first time again: a page fault and a zeroed 4 KiB page each. A MambaRec step at
L=1000, batch 64 takes ~73,000 of them (~290 MiB). :func:`keep_freed_memory` raises the mmap
threshold to 256 MiB and the trim threshold to 2 GiB (``mallopt``), so freed blocks up to 256 MiB
stay in the heap and the next step reuses them: after the first steps a step takes no page
faults. Blocks above 256 MiB (SASRec's L x L attention at long L) are still mapped per use, which
bounds what the heap keeps. The cost is that the process keeps its peak heap mapped instead of
handing freed memory back to the system.

Measured on 2 cores, L=1000, batch 64 (docs/benchmarks.md): MambaRec's step 0.60 s against
0.79-1.05 s, at the same peak memory; RecBole's SASRec 9.9-11.5 s either way, its peak 4.6 against
4.0 GiB; MLSA4Rec unchanged.

Written here rather than taken from a library: jemalloc and tcmalloc do the same but must be
preloaded (``LD_PRELOAD``) before Python starts, which ``python run_recbole.py`` cannot do for
the user; ``mallopt`` is glibc's own interface and takes effect at once. On other C libraries
(musl, macOS, Windows) nothing changes.

RecBole's ``Trainer`` applies it when built for a CPU device unless the config says
``keep_freed_memory: False`` (:func:`install`), so RecBole's own models run under the same
allocator as ours in one process; the benchmarks apply it to every model they time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap and are reused (glibc's adaptive rule stops at 32 MiB;
#: an explicit mallopt does not). 256 MiB covers a Mamba layer's largest buffers at batch x L up
#: to ~160,000 positions; at 1 GiB SASRec's L x L attention blocks stayed in the heap too and
#: its peak memory grew 1.9x at L=1000, batch 64 (its step 1.9x faster).
MMAP_THRESHOLD = 256 << 20
#: freed memory at the top of the heap kept before glibc trims it back to the system
TRIM_THRESHOLD = (1 << 31) - 1

_STATE: dict[str, bool] = {}
_ORIGINAL: dict = {}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to :data:`MMAP_THRESHOLD` for reuse (once per process).

    Returns whether the setting is in effect (False where the C library is not glibc)."""
    if "applied" in _STATE:
        return _STATE["applied"]
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # pragma: no cover - depends on the platform
            ok = False
    _STATE["applied"] = ok
    logging.getLogger(__name__).debug("keep_freed_memory: %s", "in effect" if ok else "not available here")
    return ok


def _trainer_init(self, config, model) -> None:
    _ORIGINAL["__init__"](self, config, model)
    device = config["device"]
    if config["keep_freed_memory"] is not False and getattr(device, "type", str(device)) == "cpu":
        keep_freed_memory()


def install() -> None:
    """Patch RecBole's ``AbstractTrainer.__init__`` to apply :func:`keep_freed_memory` on CPU
    (idempotent)."""
    from recbole.trainer.trainer import AbstractTrainer

    if _ORIGINAL:
        return
    _ORIGINAL["__init__"] = AbstractTrainer.__init__
    AbstractTrainer.__init__ = _trainer_init


__all__ = ["keep_freed_memory", "install", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]
