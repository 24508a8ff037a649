# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch 2.13.0 CPU is what the project is tested with; set TORCH= to use what the index resolves.
TORCH ?= torch==2.13.0

.PHONY: venv demo test bench-scan bench-prep ml-1m clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH)"
	$(PIP) install --no-deps "recbole==1.2.1"
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) run_recbole.py --model=MLSA4Rec --dataset=ml-100k --config_files=properties/demo.yaml

test: venv
	$(PY) -m pytest -q tests

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
