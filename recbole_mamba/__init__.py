"""recbole-mamba: Mamba-based sequential recommenders for RecBole.

``import recbole_mamba`` applies the compatibility fixes for recbole 1.2.1 on today's stack
(:mod:`recbole_mamba.compat`) and registers the models (:mod:`recbole_mamba.registry`), so that
RecBole's own entry points find ``MambaRec``, ``MoEMaTrRec`` and ``MLSA4Rec`` by name, and makes
RecBole's checkpoints atomic and its runs resumable after a kill (:mod:`recbole_mamba.checkpoints`);
a trainer on the CPU keeps freed memory for reuse (:mod:`recbole_mamba.allocator`).
"""

from __future__ import annotations

__version__ = "0.1.0"

try:
    import recbole
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "recbole_mamba needs recbole 1.2.1, installed without its pins: "
        "`pip install --no-deps recbole==1.2.1` (see README, 'Why --no-deps')"
    ) from exc

if getattr(recbole, "__version__", None) != "1.2.1":  # pragma: no cover - depends on the install
    raise ImportError(
        f"recbole_mamba patches recbole 1.2.1 (docs/recbole-patches.md lists each change); found recbole "
        f"{getattr(recbole, '__version__', 'unknown')}. Install it with `pip install --no-deps recbole==1.2.1`."
    )

from recbole_mamba import compat  # noqa: E402

compat.apply()

from recbole_mamba import registry  # noqa: E402

registry.register()

from recbole_mamba import allocator, checkpoints, config_check, data_check, distributed, evaluation, optim  # noqa: E402

checkpoints.install()
distributed.install()
config_check.install()
data_check.install()
evaluation.install()
optim.install()
allocator.install()  # after distributed: its wrapper of AbstractTrainer.__init__ stays outermost

from recbole_mamba.models import MambaRec, MLSA4Rec, MoEMaTrRec  # noqa: E402

__all__ = ["MambaRec", "MoEMaTrRec", "MLSA4Rec", "__version__"]
