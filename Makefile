# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint bench clean chromium pgbouncer prometheus

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## Start the service with no configuration: embedded PostgreSQL in ./var, the neonize gateway.
run: install pgbouncer
	$(VENV)/bin/sessiond serve --host $(HOST) --port $(PORT)

## Debian's Chromium for the browser tests (never a browser downloaded by the test tool).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

## Debian's PgBouncer: each gateway worker runs one in front of the WhatsApp device store.
pgbouncer:
	@if [ ! -x /usr/sbin/pgbouncer ] && ! command -v pgbouncer >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer; \
	fi

## Debian's Prometheus for `promtool`: the tests check and unit-test deploy/prometheus/alerts.yml.
prometheus:
	@if ! command -v promtool >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

## Run every test on two xdist workers (PostgreSQL tests use SESSIOND_TEST_DATABASE_URL, or an
## embedded server per worker). PYTEST_ARGS="-n 0" runs them in one process.
test: install chromium pgbouncer prometheus
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: install pgbouncer
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
