"""What the benchmarks share for child processes: their environment and /proc memory readings."""

from __future__ import annotations

import os
from pathlib import Path


def child_env() -> dict:
    """The environment for a child ``python -m recbole_mamba...``: this package importable
    even when it is used from a source checkout rather than installed."""
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


def status_bytes(key: str, default: int | None = None) -> int:
    """``VmRSS`` / ``VmHWM`` (``key``) of this process from /proc, in bytes; ``default`` where it
    cannot be read (an error when ``default`` is None)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        if default is None:
            raise
        return default
    if default is None:
        raise RuntimeError(f"{key} not in /proc/self/status")
    return default
