"""What our command-line tools share: RecBole-style ``--key=value`` config flags, running
RecBole away from our own flags, and a data path that holds in any working directory."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


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


def pinned_data_path(model: str, dataset: str, config_files: list[str], config: dict) -> dict:
    """The RecBole config for ``model`` on ``dataset`` checked and made location-independent.

    Runs that happen in other working directories (Ray trials, comparison runs) must not depend on
    a relative ``data_path``: returns ``{"data_path": <absolute folder>}`` to add to their config
    (empty for ml-100k, which lives inside RecBole's wheel). Raises ``ValueError`` with the
    command that creates the atomic files when they are missing (RecBole would try to download).
    Also returns the resolved ``valid_metric`` under ``"_valid_metric"`` and ``eval_step`` under
    ``"_eval_step"`` for callers that need them.
    """
    from recbole.config import Config

    from recbole_mamba.data_check import missing_dataset_message

    with recbole_sees_no_flags():
        resolved = Config(model=model, dataset=dataset, config_file_list=config_files or None,
                          config_dict=dict(config))
    message = missing_dataset_message(dataset, resolved["data_path"])
    if message:
        raise ValueError(message)
    out: dict[str, Any] = {"_valid_metric": str(resolved["valid_metric"]).lower(),
                           "_eval_step": resolved["eval_step"]}
    if dataset != "ml-100k":
        out["data_path"] = str(Path(resolved["data_path"]).resolve().parent)
    return out
