# Each target sets up what it needs: a fresh machine only needs Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve test lint format clean perf-smoke

install: $(STAMP)

# torch==2.13.0 (pinned in pyproject.toml) is the CPU build that pip takes from this machine's disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

serve: install
	$(BIN)/python -m stack.serve $(if $(GROUPS),--groups $(GROUPS))

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build .cache
