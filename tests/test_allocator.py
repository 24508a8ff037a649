"""keep_freed_memory: a RecBole trainer on the CPU makes glibc keep freed blocks for reuse, so a
step's large buffers are not page-faulted in again every step; ``keep_freed_memory: False``
leaves the allocator alone. Each case runs in a fresh process (the setting is process-wide)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

SCRIPT = r"""
import json, resource, sys
import torch
import recbole_mamba  # noqa: F401
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed
from recbole_mamba.allocator import _STATE

cfg = json.loads(sys.argv[1])
config = Config(model="MambaRec", dataset="ml-100k", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
train, valid, test = data_preparation(config, create_dataset(config))
model = get_model("MambaRec")(config, train._dataset)
get_trainer(config["MODEL_TYPE"], "MambaRec")(config, model)


def faults_of_a_64mib_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)  # 64 MiB, above glibc's largest adaptive mmap threshold (32 MiB)
    x.fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults_of_a_64mib_buffer()
# the fewest of three rounds: a page fault elsewhere in the process (a thread's stack) is not the point
print(json.dumps({"applied": _STATE.get("applied"), "faults": min(faults_of_a_64mib_buffer() for _ in range(3))}))
"""


def _run(tmp_path: Path, **overrides) -> dict:
    cfg = tiny_config(tmp_path, **overrides)
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_trainer_keeps_freed_memory_for_reuse(tmp_path):
    got = _run(tmp_path)
    assert got["applied"] is True
    # the second 64 MiB buffer reuses the first one's pages: 16,384 faults without the setting
    assert got["faults"] < 1000, got


def test_keep_freed_memory_false_leaves_the_allocator_alone(tmp_path):
    got = _run(tmp_path, keep_freed_memory=False)
    assert got["applied"] is None  # never asked
    assert got["faults"] > 10_000, got  # the buffer is mapped afresh and faulted in page by page


def test_keep_freed_memory_rejects_a_non_boolean(in_tmp):
    from recbole.config import Config

    from recbole_mamba.config_check import ConfigError

    with pytest.raises(ConfigError, match="keep_freed_memory"):
        Config(model="MambaRec", dataset="ml-100k", config_dict=tiny_config(in_tmp, keep_freed_memory="yes"))
