# piperctl — one-command setup, demo, tests and benchmarks.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.piperctl-installed
DEMO_DIR ?= outputs/demo

# Find a Python >= 3.12 without help: plain names first, then pyenv's builds, oldest >= 3.12 first (the tested one)
# (the pyenv shim only answers when PYENV_VERSION names an installed version).
define find_python
for cand in python3.12 python3.13 python3; do \
  if command -v $$cand >/dev/null 2>&1 && $$cand -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
    echo "$$cand"; exit 0; fi; done; \
if command -v pyenv >/dev/null 2>&1; then \
  for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$$' | sort -V); do \
    minor=$$(echo $$v | cut -d. -f1,2); \
    if PYENV_VERSION=$$v python$$minor -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
      echo "env PYENV_VERSION=$$v python$$minor"; exit 0; fi; done; fi; \
exit 1
endef

.PHONY: help install demo test test-fast bench lint clean

help:
	@echo "make demo   - set up and run the end-to-end demo on synthesized PiPER data (offline)"
	@echo "make test   - set up and run the test suite"
	@echo "make test-fast - the tests that train no model (the edit loop)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make lint   - ruff"

install: $(STAMP)

# Re-install only when the package metadata changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	@PYTHON="$$( $(find_python) )" || { echo "error: no Python >= 3.12 found (tried python3.13, python3.12, python3, pyenv). Install Python 3.12+ and retry." >&2; exit 2; }; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	  echo "creating $(VENV) with $$PYTHON"; rm -rf $(VENV); $$PYTHON -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: install
	# Two workers, one test file each at a time: module fixtures stay shared within a file.
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not train and not slow"

bench: install
	HF_HUB_OFFLINE=1 bash bench/run_all.sh

lint: install
	$(VENV)/bin/ruff check piperctl tests bench
	$(VENV)/bin/ruff format --check piperctl tests bench

clean:
	rm -rf outputs .pytest_cache
