# `make run` and `make test` each set everything up first (quick when already set up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# PYTEST_WORKERS=2 runs test files on two workers, each file whole on one so its module-scoped fixtures
# are built once. Off by default: on a busy 2-core machine two CPU-bound generations at once pushed the
# browser and SIGKILL-rerun tests past their time bounds (see the commit that set this).
PYTEST_WORKERS ?= 0

.PHONY: setup run test lint system-deps demo-model bench bench-portal bench-queue clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runner,test,ray]'  # ray: the Ray executor's tests
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

bench-queue: setup
	$(BIN)/python bench/queue_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
