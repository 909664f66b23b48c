# `make run` and `make test` each set everything up first (quick when already set up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
PYTEST_ARGS ?=
# PYTEST_WORKERS=2 runs test files on two workers, each file whole on one so its module-scoped fixtures
# are built once. Off by default: on a busy 2-core machine two CPU-bound generations at once pushed the
# browser and SIGKILL-rerun tests past their time bounds (see the commit that set this).
PYTEST_WORKERS ?= 0

.PHONY: setup run test lint system-deps demo-model bench bench-portal bench-queue clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runner,test]'
	touch $@

# Ray (several hosts) is an optional extra of ~285 MB: the tests install it, `make run` does not.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[ray]'
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/python -m app serve

# Debian's chromium drives the browser tests (Playwright never downloads a browser here);
# Debian's nginx and caddy run the deploy/ configs in front of the portal in the tests;
# iproute2's `ip` brings up the loopback of the Ray tests' network namespace. (tool:package)
SYSTEM_TOOLS := chromium:chromium nginx:nginx caddy:caddy ip:iproute2
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "The tests need Debian's$$missing: sudo apt-get install$$missing"; exit 1; fi; fi

lint: setup
	$(BIN)/ruff check .

test: setup $(RAY_STAMP) system-deps lint
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
