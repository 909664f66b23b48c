# `make run` and `make test` each set everything up first (quick when already set up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test lint system-deps demo-model bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runner,test]'
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/python -m app serve

# Debian's chromium drives the browser tests (Playwright never downloads a browser here).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "The browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi; }

lint: setup
	$(BIN)/ruff check .

test: setup system-deps lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo-model: setup
	$(BIN)/python -m gpu_runner demo-model data/models/demo

bench: setup
	$(BIN)/python bench/demo_job.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
