"""The models, one per file: MambaRec, MoEMaTrRec, MLSA4Rec."""

from recbole_mamba.models.base import MambaSequentialBase
from recbole_mamba.models.mambarec import MambaRec
from recbole_mamba.models.mlsa4rec import MLSA4Rec
from recbole_mamba.models.moematrrec import MoEMaTrRec

__all__ = ["MambaSequentialBase", "MambaRec", "MoEMaTrRec", "MLSA4Rec"]
