# The two commands: `make run` serves the portal, `make test` passes the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install browser bench bench-quick clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m portal.serve

browser:
	@bash scripts/ensure-chromium

lint: install
	$(BIN)/ruff check .

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks (bench/README.md): production-like stack on loopback; they print figures, they assert nothing.
BENCHES := bench/sync.py bench/pull.py bench/nightly.py bench/push_latency.py bench/pages.py bench/tenants.py

bench: install
	@bash scripts/ensure-wrk
	@set -e; for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b; done

bench-quick: install
	@bash scripts/ensure-wrk
	@set -e; for b in $(BENCHES); do echo "== $$b --quick"; $(BIN)/python $$b --quick; done

clean:
	rm -rf $(VENV) instance
