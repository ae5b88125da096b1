# Two commands: `make demo` (install + demo server on SQLite) and `make test` (install + whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
DEMO_ADDR ?= 127.0.0.1:8000

.PHONY: demo demo-web test install lint test-sqlite test-postgres e2e-deps browser-deps bench bench-servers

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,redis]'
	touch $@

install: $(VENV)/.installed

e2e-deps:
	cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error

# The demo's web app (demo_project/frontend): npm packages from package-lock.json, the client schema generated
# from the bucket definitions, then the Vite build into demo_project/todos/static/todos/app/.
DEMO_WEB := demo_project/frontend

demo-web: install
	cd $(DEMO_WEB) && npm ci --no-audit --no-fund --loglevel=error
	$(PY) manage.py powersync_schema --lang ts --out $(DEMO_WEB)/src/schema.ts
	cd $(DEMO_WEB) && npm run --silent build -- --logLevel warn

demo: install demo-web
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo_seed --user demo --password demo --lists 3 --todos-per-list 5 --if-empty
	@echo "Open http://$(DEMO_ADDR)/ and log in as demo / demo (a token for your own client: /api/token)."
	$(PY) manage.py runserver $(DEMO_ADDR)

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

# The demo web app's browser test drives Debian's Chromium (never a browser download of Playwright's).
browser-deps:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| (echo "The browser test needs Debian's chromium: apt-get install chromium (as root)"; exit 1)

test: lint browser-deps test-sqlite test-postgres

bench: install
	$(PY) bench/initial_sync.py

# ASGI servers side by side: throughput and memory per stalled reader (needs the 'production' extra's
# uvicorn, plus hypercorn and granian).
bench-servers: install
	$(VENV)/bin/pip install --quiet hypercorn granian
	$(PY) bench/asgi_servers.py
