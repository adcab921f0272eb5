# The README's two commands. Each creates .venv (Python 3.11) when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

train: install          ## install, then train on the embedded synthetic faces (no download)
	$(BIN)/python -m facegen.train $(ARGS)

test: install-dev       ## install with the test extras, then run the default test suite
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
