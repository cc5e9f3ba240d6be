# Every target creates or reuses a local virtual environment, so a fresh
# machine needs nothing but python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mesowriter-installed

.PHONY: demo test bench stress lint clean compat

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

# make compat: mesofield 0.5.0b0 (the reference user, installed as published,
# --no-deps: no Qt, Jupyter or NI-DAQ) drives mesowriter and its own legacy
# writer through its own code, then its readers compare the files. A separate
# environment, so mesofield's pins never touch .venv. See README "make compat".
COMPAT_VENV ?= .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.compat-installed

$(COMPAT_STAMP): pyproject.toml compat/requirements.txt
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install --quiet --upgrade pip
	$(COMPAT_PY) -m pip install --quiet -r compat/requirements.txt -e .
	$(COMPAT_PY) -m pip install --quiet --no-deps mesofield==0.5.0b0
	touch $(COMPAT_STAMP)

compat: $(COMPAT_STAMP)
	$(COMPAT_PY) compat/run_compat.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) compat-output build *.egg-info .pytest_cache .mypy_cache .ruff_cache
