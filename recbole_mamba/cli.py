"""What our command-line tools share: RecBole-style ``--key=value`` config flags."""

from __future__ import annotations

from typing import Any

import yaml


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
