# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs setup system-deps clean

setup: $(STAMP)

# pip takes torch/torchvision from this machine's disk (see README: Installing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hpo.run --trials 20 --sweep sweeps/tiny.yaml

# Debian packages and services some tests use (a browser, a database server).
system-deps:
	bash .ci/system-deps.sh

# The docs build is not --quiet: that hides the warnings --strict fails on, and it passes.
test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(PY) -m pytest

# The docs site under site/ (mkdocs.yml); `$(VENV)/bin/mkdocs serve` to browse it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs site .pytest_cache .ruff_cache
