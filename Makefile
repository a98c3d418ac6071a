# elastic-keras: every user-facing job is a target here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PROFILE ?= paper
DATA    ?=
DATA_DIR ?=
WEIGHTS ?=
RUNS    ?=

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install test test-all demo describe reproduce-table1 reproduce-table2 figure3 budget \
        reproduce-bai-table2 bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
