# Two commands do all the set-up on a fresh Debian / Python 3.11 machine without a GPU:
#   make run    -> creates .venv/ and runs the default toy pipeline end to end (snakemake --cores 2)
#   make test   -> creates .venv/ (and .venv-inception/, the Inception metrics' worker) and runs
#                  the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# The CPU wheel of torch lies in /opt/wheels on these machines; elsewhere pip takes it from the
# PyTorch CPU index so that no multi-GB CUDA build is pulled.
PIP_EXTRA := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

# The Inception metrics' feature worker (evaluate.fid/kid/precision_recall) runs in its own
# environment: torchvision must match torch exactly, and no torchvision wheel imports beside the
# CPU torch 2.13.0 of .venv here, so .venv-inception pairs torch 2.14.1 with torchvision 0.29.1
# (elsewhere from the PyTorch CPU index; on machines with /opt/wheels the local CUDA build,
# ~3 min and 5.6 GB). A cluster's conda env has torchvision + torch-fidelity itself.
INC_VENV := .venv-inception
INCEPTION_PINS := "torch==2.14.1" "torchvision==0.29.1" "torch-fidelity==0.4.0" "numpy==2.4.6" \
                  "tqdm==4.70.1"

.PHONY: run test test-slow lint bench env envs inception-env repro pull

$(BIN)/reflowma: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_EXTRA) "torch==2.13.0" "setuptools>=77.0.3,<82"
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[test]"
	$(BIN)/pip check
	touch $@

env: $(BIN)/reflowma

# rebuilt when the pins change (the stamp holds the pins it was built with)
INC_STAMP := $(INC_VENV)/.installed
ifneq ($(strip $(shell cat $(INC_STAMP) 2>/dev/null)),$(strip $(INCEPTION_PINS)))
.PHONY: $(INC_STAMP)
endif
$(INC_STAMP):
	$(PYTHON) -m venv $(INC_VENV)
	$(INC_VENV)/bin/pip install -q $(PIP_EXTRA) $(INCEPTION_PINS)
	$(INC_VENV)/bin/pip check
	$(INC_VENV)/bin/python -c "import torch_fidelity"
	echo '$(INCEPTION_PINS)' > $@

inception-env: $(INC_STAMP)

run: env
	$(BIN)/snakemake --cores $(CORES) --config preset=toy

# the two environments are independent installs: built side by side
envs:
	$(MAKE) -j2 env inception-env

test: envs
	$(BIN)/python -m pytest

test-slow: envs
	$(BIN)/python -m pytest -m "slow or not slow"  # everything, slow-marked tests included

lint: env
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/lint-imports
	$(BIN)/python workflow/scripts/lint.py  # snakemake --lint, one lint accepted (see the script)
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
