"""``python -m recbole_mamba.warmup``: after it, the models' training, evaluation and online paths
find every CPU kernel they call in numba's on-disk cache (nothing left to compile)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recbole_mamba.bench.proc import child_env

# run in a fresh interpreter: every kernel a model calls, with the cache's hits and misses
_PROBE = r"""
import json, sys, numba, torch
from recbole_mamba.bench.models import build_model, random_sequences
torch.manual_seed(0)
for name in ("MambaRec", "MLSA4Rec", "MoEMaTrRec"):
    model = build_model(name, 30).train()
    seqs = random_sequences(model.n_items, 4, 30)
    lengths = torch.tensor([30, 12, 30, 1])
    model.forward(seqs, lengths).sum().backward()
    model.eval()
    with torch.no_grad():
        model.forward(seqs, lengths)
        state = model.update_state(model.init_state(seqs, lengths), seqs[:, 0])
        model.score_state(state)
hits, misses = {}, {}
for mod_name, mod in list(sys.modules.items()):
    if not mod_name.startswith("recbole_mamba.ops"):
        continue
    for fn_name, fn in vars(mod).items():
        if isinstance(fn, numba.core.registry.CPUDispatcher) and fn.stats.cache_hits is not None:
            key = mod_name.rsplit(".", 1)[1] + "." + fn_name
            if fn.stats.cache_hits:
                hits[key] = sum(fn.stats.cache_hits.values())
            if fn.stats.cache_misses:
                misses[key] = [str(sig) for sig in fn.stats.cache_misses]
print(json.dumps({"hits": hits, "misses": misses}))
"""

KERNELS = {"selective_scan_cpu._scan_fwd", "selective_scan_cpu._scan_bwd", "causal_conv1d._fwd",
           "causal_conv1d._bwd", "causal_conv1d_update._update", "selective_state_update._update",
           "causal_lsa._lsa_fwd", "causal_lsa._lsa_bwd", "causal_lsa_step._lsa_step", "dropout_cpu._apply"}


def test_after_warmup_every_kernel_the_models_call_is_loaded_not_compiled():
    warm = subprocess.run([sys.executable, "-m", "recbole_mamba.warmup", "--dtypes", "float32", "--jobs", "2"],
                          capture_output=True, text=True, env=child_env(), timeout=900)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "CPU kernels ready" in warm.stdout and "mamba-train (float32)" in warm.stdout
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                           env=dict(child_env(), OMP_NUM_THREADS="1"), timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    stats = json.loads(probe.stdout.strip().splitlines()[-1])
    assert stats["misses"] == {}, stats["misses"]
    assert KERNELS <= set(stats["hits"]), sorted(KERNELS - set(stats["hits"]))


@pytest.mark.parametrize("argv, message", [
    (["--dtypes", "float16"], "--dtypes: float16 not among float32, float64"),
    (["--groups", "mamba-train,gpu"], "--groups: gpu not among"),
    (["--dtypes", ","], "--dtypes: empty"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    from recbole_mamba import warmup

    with pytest.raises(SystemExit) as exc:
        warmup.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
