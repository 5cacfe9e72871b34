# AIMOS: `make run` serves it, `make test` tests it. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test install install-dev system lint format examples bench clean

$(VENV)/.installed: requirements.txt client/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@$(PY) -m pip install -q --disable-pip-version-check -e ./client
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The sandbox `make run` prepares: AIMOS_SANDBOX from the environment, else from .env.
SANDBOX = $(or $(AIMOS_SANDBOX),$(shell sed -nE 's/^[[:space:]]*(export[[:space:]]+)?AIMOS_SANDBOX=["'\'']?([a-z]+).*/\2/p' .env 2>/dev/null | tail -n 1),process)

## Serve on http://127.0.0.1:8000 with workers (embedded SQLite and Redis unless configured).
## As root first installs what the sandbox needs; otherwise the launcher says what is missing.
run: install
	@scripts/setup-system --if-root --sandbox process $(if $(filter docker,$(SANDBOX)),--sandbox docker) \
		|| echo "make run: scripts/setup-system failed (above); starting anyway"
	@DEBUG=$${DEBUG:-1} $(PY) -m aimos.launcher

## System packages, the Docker engine and the sandbox base image (idempotent).
system:
	@scripts/setup-system

## Everything the tests need, then the whole suite.
test: install-dev system
	@scripts/test

## Pack each example agent into dist/examples/<name>.tar.gz.
examples: install
	@DEBUG=$${DEBUG:-1} $(PY) manage.py pack_agent examples/*/

lint: install-dev
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: install-dev
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/ .pytest_cache
