# One command runs the farm (make up), one command passes the tests (make test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test test-fast lint format typecheck bench bench-tools clean

# the farm itself (make up) needs only the runtime; the tests add PyODM, SeaweedFS, compose, linters
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# the web app's browser tests drive a headless Chromium (Debian 12: chromium + chromium-driver, as root)
CHROMEDRIVER ?= /usr/bin/chromedriver
$(CHROMEDRIVER):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

install: $(BIN)/.installed-test $(CHROMEDRIVER)

up: $(BIN)/.installed
	$(BIN)/odm-farm up

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q --ignore=tests/e2e --ignore=tests/faults

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check api workers shared odm_farm

format: install
	$(BIN)/ruff format api workers shared odm_farm tests bench
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy api workers shared odm_farm

# the benchmarks' own tools (not needed by make test): wrk, the load generator (C, not the bottleneck),
# and haproxy, the scale-out benchmark's load balancer; Debian packages, installed once
bench-tools:
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

bench: install bench-tools
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
