# Two commands do all the set-up on a fresh Debian / Python 3.11 machine without a GPU:
#   make run    -> creates .venv/ and runs the default toy pipeline end to end (snakemake --cores 2)
#   make test   -> creates .venv/ and runs the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# The CPU wheel of torch lies in /opt/wheels on these machines; elsewhere pip takes it from the
# PyTorch CPU index so that no multi-GB CUDA build is pulled.
PIP_EXTRA := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: run test test-slow lint bench env repro pull

$(BIN)/reflowma: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_EXTRA) "torch==2.13.0" "setuptools>=77.0.3,<82"
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[test]"
	$(BIN)/pip check
	touch $@

env: $(BIN)/reflowma

run: env
	$(BIN)/snakemake --cores $(CORES) --config preset=toy

test: env
	$(BIN)/python -m pytest

test-slow: env
	$(BIN)/python -m pytest -m "slow or not slow"  # everything, slow-marked tests included

lint: env
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/lint-imports
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

# Every benchmark (benchmarks/run.py): a table, and benchmarks/results/latest.json.
# A subset or a smoke check: make bench BENCH_ARGS="--quick --only evaluate"
BENCH_ARGS ?=
bench: env
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# DVC wraps the workflow: rebuild what changed, tables and figures included.
repro: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Fetch results from the DVC remote, then `snakemake --touch` (workflow/scripts/pull.sh).
pull: env
	PATH="$(CURDIR)/$(BIN):$$PATH" workflow/scripts/pull.sh
