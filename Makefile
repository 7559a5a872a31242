# Two entry points: `make demo` and `make test`. Both bootstrap from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest pytest-py313 bench clean

# Python 3.13 (pyenv keeps one on these machines): its asyncio.Server.wait_closed() waits for
# every open connection, and its logging and interpreter exit differ, so the server tests and
# the exit tests (watchdog, stalled log stream) run there too when it is installed.
PY313 := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))
VENV313 ?= .venv313
SERVER_TESTS := tests/servers tests/scenarios/test_http_signals.py tests/scenarios/test_http_load.py tests/scenarios/test_grpc_signals.py \
	tests/scenarios/test_grpc_module_level.py tests/scenarios/test_lifecycle_watchdog.py \
	tests/scenarios/test_log_stall.py tests/test_logqueue.py tests/test_drain.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/shop/main.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

types: $(STAMP)
	$(BIN)/mypy

# Debian's chromium renders the drill's --html page in tests/drill (headless). These machines
# run make as root (no sudo). Where it cannot be installed the stamp stays absent (it is tried
# again next time) and that one test skips, saying why.
CHROMIUM := $(VENV)/.chromium
$(CHROMIUM):
	@mkdir -p $(@D)
	@if command -v chromium >/dev/null 2>&1 \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	then touch $@; else echo "chromium could not be installed: the drill's HTML test will skip"; fi

pytest: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest

ifneq ($(PY313),)
$(VENV313)/.installed: pyproject.toml
	$(PY313) -m venv $(VENV313)
	$(VENV313)/bin/pip install --quiet --upgrade pip
	$(VENV313)/bin/pip install --quiet -e '.[dev]'
	touch $@

pytest-py313: $(VENV313)/.installed
	$(VENV313)/bin/pytest $(SERVER_TESTS)
else
pytest-py313: $(STAMP)
	@echo "python3.13 not found: the server tests ran on $$($(BIN)/python -V) only"
endif

test: lint types pytest pytest-py313

bench: $(STAMP)
	$(BIN)/python bench/spawn.py
	$(BIN)/python bench/idle_stop.py
	$(BIN)/python bench/grpc_ready.py
	$(BIN)/python bench/registry_notice.py
	$(BIN)/python bench/ready_time.py
	$(BIN)/python bench/http_stop.py
	$(BIN)/python bench/http_throughput.py
	$(BIN)/python bench/granian_throughput.py
	$(BIN)/python bench/cli_run.py
	$(BIN)/python bench/gateway_throughput.py
	$(BIN)/python bench/http_throughput.py 8 2 --log file
	$(BIN)/python bench/http_throughput.py 8 2 --log slowpipe
	$(BIN)/python bench/rolling_restart.py
	$(BIN)/python bench/workers_throughput.py
	$(BIN)/python bench/workers_reload.py

clean:
	rm -rf $(VENV) $(VENV313) .mypy_cache .ruff_cache .pytest_cache
