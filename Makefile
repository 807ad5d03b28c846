# `make run` and `make test` work on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint types unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/nudge secrets init
	$(BIN)/nudge run --sink 8025

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint types
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) nudge.db nudge.db-wal nudge.db-shm .pytest_cache .mypy_cache .ruff_cache
