# `make simulate` and `make test` each bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FEDWARD_DATA_DIR ?= $(abspath ../shared/data)
export HF_DATASETS_OFFLINE := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
# Flower's CLI starts flower-superlink & co. by name: the venv's bin goes first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv simulate test test-fast clean

venv: $(STAMP)

# torch first, pinned to the CPU build that lies on these machines' disk; the
# project's range (<2.15) then installs nothing more.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

simulate: $(STAMP)
	$(BIN)/fedward simulate --task tabular --hospitals 4 --partition iid --rounds 5 --epsilon 3 --out runs/simulate-$$(date +%Y%m%d-%H%M%S)

# Two workers, one test file each at a time (a file's module fixtures run once): the
# federation tests spend much of their time waiting on rounds and heartbeats.
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs --durations=15 -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow" -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
