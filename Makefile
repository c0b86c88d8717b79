# sms4sats — every target installs what it needs first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-unit test-integration test-e2e bench chaos lint typecheck fmt reset bootstrap catalog clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies

run: $(STAMP) ## Start the whole stack on embedded PostgreSQL + NATS (Ctrl-C stops it)
	$(PY) -m sandbox.devstack --dir .dev

test: $(STAMP) ## Run the whole suite: unit, integration (real PostgreSQL + NATS), e2e
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

bench: $(STAMP) ## Start the stack, measure create/poll against a bare aiohttp baseline
	$(PY) -m bench --out bench-results.json

chaos: $(STAMP) ## Start the stack, inject every fault under a stream of orders, print the table
	$(PY) -m tests.chaos

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy --strict over the code
	$(VENV)/bin/mypy libs services sandbox bench tests/chaos

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bootstrap: $(STAMP) ## Apply migrations and create streams against SMS4SATS_* servers
	$(PY) -m libs.common.tools.bootstrap

catalog: $(STAMP) ## Refresh the catalog and the BTC/USD rate now (against SMS4SATS_* servers)
	$(PY) -m services.scheduler.catalog_refresh refresh

reset: ## Wipe the dev stack's data (.dev/)
	rm -rf .dev

clean: reset
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
