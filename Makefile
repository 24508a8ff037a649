# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch 2.13.0 CPU is what the project is tested with; set TORCH= to use what the index resolves.
TORCH ?= torch==2.13.0
# Where torch comes from: PyTorch's CPU wheel index on a machine without nvidia-smi (plain PyPI
# gives the CUDA build on Linux, ~6.6 GB with its nvidia packages); PyPI's default build where a
# GPU is present. TORCH_INDEX= (empty) always uses PyPI; TORCH_INDEX=https://download.pytorch.org/whl/cu128 a CUDA build.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --retries 1 --timeout 20,)

.PHONY: venv warm demo test bench-scan bench-prep ml-1m clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) install --no-deps "recbole==1.2.1"
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# numba compiles the CPU kernels once per installation (minutes on 2 cores); this does it up front,
# in parallel processes, into the on-disk cache every later run loads (seconds when already done).
WARM_DTYPES ?= float32
warm: venv
	$(PY) -m recbole_mamba.warmup --dtypes $(WARM_DTYPES)

demo: warm
	$(PY) run_recbole.py --model=MLSA4Rec --dataset=ml-100k --config_files=properties/demo.yaml

test: WARM_DTYPES = float32,float64
test: warm
	$(PY) -m pytest -q --durations=15 tests

bench-scan: venv
	$(PY) -m recbole_mamba.bench.scan

bench-prep: venv
	$(PY) -m dataset_prep.bench --rows 100000000

# ML-1M atomic files from ../shared/data (or ML1M=/path/to/ml-1m)
ML1M ?= ../shared/data/ml-1m
ml-1m: venv
	$(PY) -m dataset_prep.movielens --input $(ML1M) --output-dir dataset/ml-1m

clean:
	rm -rf $(VENV) saved log log_tensorboard .pytest_cache
