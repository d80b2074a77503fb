# A fresh clone needs only `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
# The suite waits on I/O (the local AWS, handler sleeps) more than it computes: two
# workers, each with its own local AWS, halve its wall time. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: run test lint typecheck clean deploy-check bench bench-quick bench-throttle chaos browser screens

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/dispatch demo

lint: $(BIN)/.installed
	$(BIN)/ruff check dispatch workers tests bench
	$(BIN)/ruff format --check dispatch workers tests bench
	$(BIN)/lint-imports  # the layers in .importlinter; cycles and sizes: tests/unit/test_architecture.py
	$(BIN)/cfn-lint deploy/template.yaml deploy/service.yaml

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The console's browser tests (tests/integration/test_console_browser.py) drive Debian's
# headless chromium through Playwright; Playwright's own browser download is never used.
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = "0" ]; then \
		apt-get update && apt-get install -y --no-install-recommends chromium; \
	else \
		echo "$(CHROMIUM) is missing: the console's browser tests need Debian's chromium."; \
		echo "Install it (sudo apt-get install -y --no-install-recommends chromium), then run make test again."; \
		exit 1; \
	fi

browser: $(CHROMIUM)

test: lint typecheck browser
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BIN)/.bench-installed        # full benchmark, ~20 min; not part of `make test`
	$(BIN)/python -m bench
	$(BIN)/python -m bench.listing

bench-quick: $(BIN)/.bench-installed  # the same measurements on small sizes, a few minutes
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench.listing --records 5000 --repeats 2 --out bench/results/listing-quick.json

bench-throttle: $(BIN)/.bench-installed  # throttle accuracy, coordination cost, adaptive rate
	$(BIN)/python -m bench.throttle

chaos: $(BIN)/.installed  # 3,000 tasks under AWS faults and SIGKILLs; QUICK=1: 300, under a minute
	$(BIN)/python -m bench.chaos $(if $(QUICK),--quick)

screens: $(BIN)/.installed browser  # docs/console-*.png: the console's pages, for docs/operations.md
	$(BIN)/python -m tests.integration.console_screens

deploy-check: $(BIN)/.installed
	$(MAKE) -C deploy check PYTHON=$(abspath $(BIN)/python)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
