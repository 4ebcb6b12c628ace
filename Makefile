# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test install codegen check-codegen lint typecheck pytest bench clean

run: codegen
	$(VENV)/bin/tandem serve

test: check-codegen lint typecheck pytest

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

codegen: $(INSTALLED)
	PYTHON=$(PY) scripts/codegen

check-codegen: codegen
	git diff --exit-code --stat -- clients/ || { echo "generated stubs are stale: run 'make codegen' and commit clients/"; exit 1; }
	test -z "$$(git status --porcelain -- clients/)" || { git status --porcelain -- clients/; echo "untracked generated files: commit clients/"; exit 1; }

lint: $(INSTALLED)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy

pytest: $(INSTALLED)
	$(PY) -m pytest

bench: codegen
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV)
