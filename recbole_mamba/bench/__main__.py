"""``python -m recbole_mamba.bench``: the efficiency benchmark (see :mod:`recbole_mamba.bench.efficiency`)."""

import sys

from recbole_mamba.bench.efficiency import main

sys.exit(main())
