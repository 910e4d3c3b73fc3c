# Two commands do everything: `make train` and `make test` (each sets up the virtualenv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stride-installed
# Extra arguments for `stride train`, e.g. make train TRAIN_ARGS="--total-steps 2000000"
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is pinned in pyproject.toml: a local CPU wheel where one is provided, the
	# CUDA build on a GPU machine; an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/stride train $(TRAIN_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
