# Two commands: `make demo` (install + demo server on SQLite) and `make test` (install + whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: demo test install lint test-sqlite test-postgres e2e-deps bench bench-servers

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,redis]'
	touch $@

install: $(VENV)/.installed

e2e-deps:
	cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo_seed --owner demo --lists 3 --todos-per-list 5 --if-empty
	@echo "A token for user 'demo' (paste into your app's fetchCredentials):"
	@$(PY) manage.py powersync_token demo --ttl 86400 2>/dev/null | tail -n 1
	$(PY) manage.py runserver 127.0.0.1:8000

lint: install
	$(VENV)/bin/ruff check .

# Each pass: the demo project's tests, then the second test project's (tests/schema, a realistic schema).
SCHEMA_TESTS := tests/schema --ds=schema_project.settings

test-sqlite: install
	$(PY) -m pytest
	$(PY) -m pytest $(SCHEMA_TESTS)

test-postgres: install
	DATABASE_URL=$(PG_URL) $(PY) -m pytest
	DATABASE_URL=$(PG_URL) $(PY) -m pytest $(SCHEMA_TESTS)

test: lint test-sqlite test-postgres

bench: install
	$(PY) bench/initial_sync.py

# ASGI servers side by side: throughput and memory per stalled reader (needs the 'production' extra's
# uvicorn, plus hypercorn and granian).
bench-servers: install
	$(VENV)/bin/pip install --quiet hypercorn granian
	$(PY) bench/asgi_servers.py
