# lanewatch: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,train]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lanewatch demo

# Debian tools the tests drive for real: socat (pty pairs), promtool (metrics and rules checks),
# systemd-analyze (unit verification and sandbox score), chromium (the console's browser tests, driven by
# Playwright with executable_path=/usr/bin/chromium: never a browser download).
system-deps:
	@if ! command -v socat >/dev/null || ! command -v promtool >/dev/null || ! command -v systemd-analyze >/dev/null \
		|| ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat prometheus systemd chromium >/dev/null; \
	fi

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
