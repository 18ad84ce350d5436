# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv (Python 3.11) if missing and install tvmq with pinned dependencies.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tvmq-installed
# Slow tests CI runs (a bounded subset of `-m slow`): see pyproject.toml's `ci` marker.
PYTEST_ARGS ?=
# BOARD=1: `make test` also builds (once, cached in ~/.cache/tvmq/boards) the emulated aarch64
# board and runs the `board` tests; it skips them with the reason when it cannot build one.
BOARD ?= 1

.PHONY: demo test test-all test-slow install cross-compilers llvm-mca board clean

demo: install
	$(BIN)/tvmq demo

test: install
	$(BIN)/python -m pytest -m "not slow and not board and not tuning" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "ci and not board" $(PYTEST_ARGS)
	@if [ "$(BOARD)" = 1 ]; then PYTHON=$(CURDIR)/$(BIN)/python scripts/ci-board.sh; \
	else echo "emulated-board tests skipped (BOARD=0)"; fi

# Start a local tracker, a host RPC server and the emulated aarch64 board (builds it once).
board: install
	scripts/emulated-board.sh start

test-slow: install
	$(BIN)/python -m pytest -m "slow or tuning" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (fix: install Python 3.11 or run make PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.2"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(MAKE) --no-print-directory cross-compilers
	$(MAKE) --no-print-directory llvm-mca
	touch $(STAMP)

# Debian's cross compilers link artifacts for the ARM boards (rasp4b, rasp4b-armv7, ...);
# qemu-user-static runs the armv7 kernels of tests/schedules/test_armv7_kernels.py (optional:
# they skip without it).
cross-compilers:
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v arm-linux-gnueabihf-gcc >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian cross compilers (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf >/dev/null; } \
		|| { echo "error: could not install the cross compilers (fix: sudo apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf)"; exit 2; }; \
	else echo "error: cross compilers missing (fix: sudo apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf)"; exit 2; fi
	@command -v qemu-arm-static >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static >/dev/null; } \
		|| echo "note: qemu-arm-static missing, the armv7 kernel tests will skip (fix: sudo apt-get install qemu-user-static)"

# llvm-mca (Debian llvm-14: /usr/bin/llvm-mca-14) prices the ARM kernels' loops: tvmq.roofline.
llvm-mca:
	@if command -v llvm-mca >/dev/null || command -v llvm-mca-14 >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing llvm-mca (Debian llvm-14)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q llvm-14 >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q llvm-14 >/dev/null; } \
		|| { echo "error: could not install llvm-14 (fix: sudo apt-get install llvm-14)"; exit 2; }; \
	else echo "error: llvm-mca missing (fix: sudo apt-get install llvm-14)"; exit 2; fi

clean:
	rm -rf out .pytest_cache
