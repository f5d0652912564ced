# The two commands: `make run` serves the portal, `make test` passes the tests.
# The newest of Python 3.13, 3.12 and 3.11 that runs here (scripts/find-python); PYTHON=... picks another.
PYTHON ?= $(shell bash scripts/find-python)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install browser bench bench-quick clean

# Says which Python it picked; makes the venv anew when that Python's version changed.
install:
	@test -n "$(PYTHON)" || { echo "no Python 3.13, 3.12 or 3.11 found (PYTHON=/path/to/python3.x)" >&2; exit 1; }
	@bash scripts/ensure-venv "$(PYTHON)" "$(VENV)"

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
