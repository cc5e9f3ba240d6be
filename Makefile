# Every target creates or reuses a local virtual environment, so a fresh
# machine needs nothing but python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mesowriter-installed

.PHONY: demo test bench stress lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mesowriter demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m mesowriter bench

stress: $(STAMP)
	$(PY) -m pytest -q -m stress -o addopts="-ra"

lint: $(STAMP)
	$(PY) -m ruff check mesowriter tests benchmarks
	$(PY) -m ruff format --check mesowriter tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
