"""Hyperparameter search on Ray Tune for recbole_mamba's models and RecBole's baselines.

    python run_hyper.py --model=MLSA4Rec --dataset=ml-100k --num-samples 20 --max-epochs 30

See ``python run_hyper.py --help`` and the README ("Hyperparameter search").
"""

from __future__ import annotations

import sys

import recbole_mamba  # noqa: F401  (compat fixes, model registration)
from recbole_mamba.hyper.runner import main

if __name__ == "__main__":
    sys.exit(main())
