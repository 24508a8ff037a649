"""Every command in the README's bash blocks parses as written: ``make`` targets exist (``make
-n``), each CLI's parser accepts its arguments, and each ``run_recbole.py`` line builds a RecBole
``Config`` (model found, every flag's key and value accepted by the config checks)."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("   #")[0].split("  #")[0].strip()
            if line.startswith(("python ", "make ")):
                commands.append(line)
    return commands


PARSERS = {
    "dataset_prep.sequences": "dataset_prep.sequences", "dataset_prep.movielens": "dataset_prep.movielens",
    "dataset_prep.lfm1b": "dataset_prep.lfm1b", "dataset_prep.kuairand": "dataset_prep.kuairand",
    "recbole_mamba.recommend": "recbole_mamba.recommend", "recbole_mamba.compare": "recbole_mamba.compare",
    "recbole_mamba.bench": "recbole_mamba.bench.efficiency", "run_hyper.py": "recbole_mamba.hyper.runner",
    "recbole_mamba.warmup": "recbole_mamba.warmup", "recbole_mamba.bench.ddp": "recbole_mamba.bench.ddp",
    "recbole_mamba.evaluate": "recbole_mamba.evaluate",
}


def test_readme_has_commands_for_every_cli():
    commands = readme_commands()
    assert any(c.startswith("make demo") for c in commands) and any(c.startswith("make test") for c in commands)
    for cli in PARSERS:
        assert any(cli in c for c in commands), f"no README example for {cli}"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command, in_tmp, monkeypatch):
    words = shlex.split(command)
    if words[0] == "make":
        proc = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return
    assert words[0] == "python"
    if words[1] == "run_recbole.py":
        from recbole.config import Config

        from recbole_mamba.registry import get_model

        flags = [w for w in words[2:] if w != "--resume"]
        opts = dict(w[2:].split("=", 1) for w in flags if w.startswith("--") and "=" in w)
        get_model(opts["model"])
        files = [str(ROOT / f) for f in opts.get("config_files", "").split()] or None
        cmd = [w for w in flags if not w.startswith(("--model=", "--dataset=", "--config_files="))]
        monkeypatch.setattr(sys, "argv", ["run_recbole.py", *cmd])
        Config(model=opts["model"], dataset=opts["dataset"], config_file_list=files)
        return
    module, args = (words[2], words[3:]) if words[1] == "-m" else (words[1], words[2:])
    parser = importlib.import_module(PARSERS[module]).build_parser()
    if module in ("recbole_mamba.compare", "recbole_mamba.evaluate"):  # RecBole --key=value flags pass through
        _, extra = parser.parse_known_args(args)
        assert all(e.startswith("--") and "=" in e for e in extra), extra
    else:
        parser.parse_args(args)
