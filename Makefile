# COO — the two commands of the README are `make up` and `make test`; both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
COO := $(VENV)/bin/coo
PYTEST_ARGS ?=

.PHONY: help setup up down status test test-reliability test-compose bench bench-smoke proto lint-proto clean

help: ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## venv, Python dependencies, Debian packages (idempotent; seconds when warm)
	@bash scripts/bootstrap.sh

up: setup ## start the local stack and run a demo mission
	@$(COO) up --demo

down: ## stop the local stack
	@$(COO) down

status: ## every component with its health and URL
	@$(COO) status

test: setup ## the whole test suite against real servers
	@$(PY) -m pytest $(PYTEST_ARGS)

test-reliability: setup ## faults, load, bad input, sandbox attacks, access control, secret leaks; writes docs/reliability.md
	@COO_RELIABILITY=1 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

test-compose: setup ## docker-compose.yml on a real Docker engine of its own (stand-in images; no Grafana)
	@bash scripts/compose-setup.sh >/dev/null
	@COO_COMPOSE_TEST=1 $(PY) -m pytest tests/compose $(PYTEST_ARGS)

screenshots: setup ## refresh docs/screenshots/ (the README's tour) from the browser tests
	@COO_UPDATE_DOCS_SCREENSHOTS=1 $(PY) -m pytest tests/test_stack_e2e.py tests/test_stack_ui.py $(PYTEST_ARGS)

bench: setup ## every benchmark: bench/results/<date>.json, plots, the README's performance section
	@$(PY) -m bench.run

bench-smoke: setup ## each benchmark briefly, so they cannot rot (CI)
	@$(PY) -m bench.run --smoke

proto: setup ## regenerate services/coo/v1 from proto/
	@bash scripts/gen_proto.sh

lint-proto: ## buf lint (buf is installed with go install, cached outside the repo)
	@bash scripts/buf_lint.sh

clean: ## remove local state (var/) — not the tool cache
	rm -rf var .pytest_cache
