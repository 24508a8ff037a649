"""What our command-line tools share: RecBole-style ``--key=value`` config flags, running
RecBole away from our own flags, a data path that holds in any working directory, and the
choice of a checkpoint and a device."""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml


class UsageError(ValueError):
    """A problem with what the user gave a tool (a path, a device, a flag): the tool prints the
    message and exits with status 2."""


@contextlib.contextmanager
def recbole_sees_no_flags(workdir: str | os.PathLike | None = None) -> Iterator[None]:
    """Run RecBole inside our tools: its ``Config`` parses ``sys.argv`` (our tools' flags are not
    its own), and ``run_recbole`` writes ``log/`` under the working directory. Within the block
    ``sys.argv`` holds the program name only and, with ``workdir``, the working directory is
    ``workdir``; both are restored after."""
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = argv[:1]
    try:
        if workdir is not None:
            os.chdir(workdir)
        yield
    finally:
        sys.argv = argv
        os.chdir(cwd)


def config_flags(extra: list[str]) -> dict[str, Any]:
    """RecBole-style ``--key=value`` flags -> config dict, values parsed as YAML
    (``--epochs=5`` -> 5, ``--topk=[10]`` -> [10]); ``None`` is null, as on RecBole's command line.

    Raises ``ValueError`` for anything else, naming the argument.
    """
    out: dict[str, Any] = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}: RecBole config flags look like --key=value")
        key, value = item[2:].split("=", 1)
        parsed = yaml.safe_load(value) if value else None
        out[key] = None if parsed == "None" else parsed
    return out


class ResolvedDataset(NamedTuple):
    """What :func:`resolve_dataset` found: ``data_path`` is the absolute data folder to pin in
    the runs' config (None for ml-100k, which lives inside RecBole's wheel)."""

    data_path: str | None
    valid_metric: str
    eval_step: int


def resolve_dataset(model: str, dataset: str, config_files: list[str], config: dict) -> ResolvedDataset:
    """The RecBole config for ``model`` on ``dataset``, checked and made location-independent.

    Runs that happen in other working directories (Ray trials, comparison runs) must not depend on
    a relative ``data_path``: the result's ``data_path`` is the absolute folder to add to their
    config. A dataset RecBole hosts is downloaded when missing; otherwise ``ValueError`` with the
    command that creates the atomic files. Also returns the resolved ``valid_metric``
    (lower-case) and ``eval_step``.
    """
    from recbole.config import Config

    from recbole_mamba.data_check import ensure_dataset

    with recbole_sees_no_flags():
        resolved = Config(model=model, dataset=dataset, config_file_list=config_files or None,
                          config_dict=dict(config))
    ensure_dataset(dataset, resolved["data_path"], resolved["dataset_url"])  # DatasetUnavailable: a ValueError
    data_path = None if dataset == "ml-100k" else str(Path(resolved["data_path"]).resolve().parent)
    return ResolvedDataset(data_path, str(resolved["valid_metric"]).lower(), resolved["eval_step"])


def pick_checkpoint(given: list[str] | str, tool: str) -> str:
    """The checkpoint among ``given``: one path, a glob pattern (quoted, or expanded by the shell
    into several paths): the newest ``.pth`` that matches (named on stderr, after ``tool:``, when
    there were several). ``.resume`` files are never picked."""
    given = [given] if isinstance(given, str) else list(given)
    found: list[str] = []
    for item in given:
        found += sorted(glob.glob(item)) if glob.has_magic(item) else [item]
    found = [f for f in dict.fromkeys(found) if not f.endswith(".resume")]
    if not found:
        raise UsageError(f"--checkpoint {' '.join(given)}: no file matches; train with run_recbole.py first")
    if len(found) == 1:
        return found[0]
    missing = [f for f in found if not os.path.isfile(f)]
    if missing:
        raise UsageError(f"--checkpoint: {missing[0]} does not exist")
    newest = max(found, key=os.path.getmtime)
    print(f"{tool}: {len(found)} checkpoints given, using the newest: {newest}", file=sys.stderr)
    return newest


def check_device(device: str) -> None:
    """A torch device this machine has, else a :class:`UsageError` that says what it has."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
