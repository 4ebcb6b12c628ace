# The two commands a fresh clone needs: `make run` and `make test` (`make test-fast` while editing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# stamps: RUNTIME once the package and its runtime dependencies are in the venv,
# INSTALLED once the dev extras (codegen, linters, tests' SDKs) are too
RUNTIME := $(VENV)/.runtime
INSTALLED := $(VENV)/.installed

.PHONY: run test test-fast test-agents install codegen check-codegen lint typecheck pytest bench clean nginx wrk \
	load soak faults redis-server postgresql

# The generated stubs are committed (clients/python/tandem/v1): serving needs neither codegen
# nor the dev tools. The client package (clients/python, `tandem-client`) is installed by
# path first, editable, and the server on it: never by name, as an unrelated project owns
# `tandem-client` on PyPI.
CLIENT := clients/python
CONFIG ?=  # e.g. make run CONFIG=tandem.yaml; empty: the built-in config
run: $(RUNTIME)
	$(VENV)/bin/tandem serve $(if $(CONFIG),--config $(CONFIG))

test: check-codegen lint typecheck pytest

# The edit loop's subset, under a minute: the in-process tests (tests/unit/ mirrors
# server/ and http_bridge/) and the import layers. `make test` stays the gate.
test-fast: $(INSTALLED)
	$(PY) -m pytest -q tests/unit tests/test_layering.py

# Coding agents' own CLIs through Tandem's doors (tests/agents/), not part of `make test`:
# Codex CLI from npm, pinned, installed once into .agents/ (gitignored; the npm registry is
# needed the first time only). npm installs the native binary of this platform (an
# optional dependency, e.g. @openai/codex-linux-x64); `codex --version` proves it is there.
CODEX_VERSION := 0.171.0
CODEX_DIR := .agents/codex-$(CODEX_VERSION)
CODEX_STAMP := $(CODEX_DIR)/.installed
test-agents: $(INSTALLED) $(CODEX_STAMP)
	TANDEM_CODEX=$(abspath $(CODEX_DIR))/node_modules/.bin/codex $(PY) -m pytest -q tests/agents

$(CODEX_STAMP):
	@command -v npm >/dev/null || { echo "make test-agents needs Node.js and npm"; exit 1; }
	npm install --prefix $(CODEX_DIR) --no-save --no-package-lock --no-audit --no-fund \
	  --include=optional @openai/codex@$(CODEX_VERSION)
	$(CODEX_DIR)/node_modules/.bin/codex --version | grep -qx 'codex-cli $(CODEX_VERSION)' || \
	  { echo "Codex $(CODEX_VERSION)'s native binary did not install in $(CODEX_DIR)"; exit 1; }
	touch $@

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml $(CLIENT)/pyproject.toml | $(PY)
	@echo "installing Tandem and its runtime dependencies into $(VENV) ('make test' adds the dev tools)"
	$(PY) -m pip install -e ./$(CLIENT) -e .
	touch $@

$(INSTALLED): pyproject.toml $(CLIENT)/pyproject.toml | $(PY)
	@echo "installing Tandem with the dev tools into $(VENV)"
	$(PY) -m pip install -e ./$(CLIENT) -e '.[dev]'
	touch $(RUNTIME) $@

install: $(INSTALLED)

codegen: $(INSTALLED)
	PYTHON=$(PY) scripts/codegen

GENERATED := $(CLIENT)/ clients/typescript/gen/
check-codegen: codegen
	git diff --exit-code --stat -- $(GENERATED) || { echo "generated stubs are stale: run 'make codegen' and commit $(GENERATED)"; exit 1; }
	test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --porcelain -- $(GENERATED); echo "untracked generated files: commit $(GENERATED)"; exit 1; }

lint: $(INSTALLED)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# the whole tree, then the client package alone, strict, as its own config says
typecheck: $(INSTALLED)
	$(VENV)/bin/mypy
	cd $(CLIENT) && $(abspath $(VENV))/bin/mypy

# Two workers, a file each at a time (its module fixtures' servers start once): most
# tests wait on servers and subprocesses, so the suite takes ~2/3 of the time on 2 cores.
pytest: $(INSTALLED) nginx
	$(PY) -m pytest -n 2 --dist loadfile

BENCH_ARGS ?=  # e.g. make bench BENCH_ARGS="--litellm --before ../base"
bench: codegen nginx wrk
	$(PY) scripts/bench.py $(BENCH_ARGS)

# Proof at scale (docs/operations.md, "Load, soak and faults"); none is part of `make test`.
LOAD_ARGS ?=  # e.g. make load LOAD_ARGS="--streams 500 --baseline"
load: codegen
	$(PY) scripts/load.py $(LOAD_ARGS)

SOAK_ARGS ?=  # e.g. make soak SOAK_ARGS="--requests 20000"
soak: codegen
	$(PY) scripts/soak.py $(SOAK_ARGS)

FAULTS_ARGS ?=  # e.g. make faults FAULTS_ARGS="--outage-s 20"
faults: codegen redis-server postgresql
	$(PY) scripts/faults.py $(FAULTS_ARGS)

# TypeScript stubs and Buf (clients/typescript/): buf, protoc-gen-es and Connect, pinned
# in its package-lock.json, installed once into its gitignored node_modules (the npm
# registry is needed the first time only). `codegen` runs scripts/codegen-ts too; the
# protos' Buf lint and breaking check against the last release's image are part of `lint`.
# --ignore-scripts: none is needed (buf's launcher finds its platform package's binary).
.PHONY: lint-protos release-protos
TS_DIR := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed
BUF := $(TS_DIR)/node_modules/.bin/buf
codegen pytest: $(TS_STAMP)
lint: lint-protos

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "clients/typescript needs Node.js and npm"; exit 1; }
	cd $(TS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

lint-protos: $(TS_STAMP)
	$(BUF) lint protos
	$(BUF) breaking protos --against protos/released.binpb

# On a release: the image the breaking check compares the protos with from then on.
release-protos: $(TS_STAMP)
	$(BUF) build protos --exclude-source-info -o protos/released.binpb

# Debian's packages: nginx fronts the replica tests and is the bench's upstream; wrk is
# the bench's load. Installed when missing (as root), else a clear line says what to do.
nginx wrk:
	@PATH="$$PATH:/usr/sbin" command -v $@ >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq $@ >/dev/null; } || \
	  { echo "needs Debian's $@: apt-get install $@"; exit 1; }

# the servers `make faults` starts its own of (the machine's own are left alone)
redis-server:
	@command -v redis-server >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || \
	  { echo "needs Debian's redis-server: apt-get install redis-server"; exit 1; }

postgresql:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } || \
	  { echo "needs Debian's postgresql: apt-get install postgresql"; exit 1; }

clean:
	rm -rf $(VENV)
