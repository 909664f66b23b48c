# `make run` and `make test` each set everything up first (quick when already set up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test files run in parallel, each whole on one worker so its module-scoped fixtures (a shared portal,
# a clip generated once) are built once; PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2

.PHONY: setup run test lint system-deps demo-model bench bench-portal clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runner,test]'
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/python -m app serve

# Debian's chromium drives the browser tests (Playwright never downloads a browser here);
# Debian's nginx and caddy run the deploy/ configs in front of the portal in the tests.
SYSTEM_TOOLS := chromium nginx caddy
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "The tests need Debian's$$missing: sudo apt-get install$$missing"; exit 1; fi; fi

lint: setup
	$(BIN)/ruff check .

test: setup system-deps lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo-model: setup
	$(BIN)/python -m gpu_runner demo-model data/models/demo

bench: setup
	$(BIN)/python bench/demo_job.py

bench-portal: setup
	$(BIN)/python bench/portal_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
