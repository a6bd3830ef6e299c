# Countersign: `make demo` runs it locally, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint fmt install install-dev clean bench-fanout bench-materialize

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Countersign needs $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: install, migrate, seed, then run web + worker + beat until Ctrl-C.
demo: $(VENV)/.installed
	@bash scripts/demo.sh

## test: install the test tools and run the whole suite.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

## test-fast: everything but the tests that start real worker processes or a browser.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not worker and not browser"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=true $(BIN)/mypy .

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/ staticfiles/

## bench-fanout: postfix's smtp-sink (from Debian, its MTA never started), the bench
## requirements, then bench/fanout.py against PostgreSQL + Redis. BENCH_ARGS="--n 2000".
bench-fanout: $(VENV)/.installed-dev
	@command -v smtp-sink >/dev/null 2>&1 || { \
	  echo "postfix" "postfix/main_mailer_type" select "No configuration" | debconf-set-selections; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix; }
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/fanout.py $(BENCH_ARGS)

## bench-materialize: freezing N (default 1,000,000) recipients against a raw INSERT ... SELECT.
bench-materialize: $(VENV)/.installed-dev
	$(BIN)/python bench/materialize.py $(BENCH_ARGS)
