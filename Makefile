# The two commands: `make run` (the main job on the embedded digits data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Install torch first and pinned: a plain resolve pulls a multi-GB CUDA build. --no-compile: pip
# would byte-compile all ~15,000 modules (about a minute here); Python compiles the few it imports.
PIP := $(PY) -m pip install --disable-pip-version-check --no-compile -q -c constraints.txt

.PHONY: install tools run test clean

install: tools $(STAMP)

# System tools the tests need: tclsh runs the block-design Tcl (tests/test_vivado_bundle.py).
# Installed with apt-get as root or through sudo; otherwise stop naming it.
APT_TCL := apt-get update -qq && apt-get install -y -qq tcl
tools:
	@command -v tclsh >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "tclsh is missing and apt-get is not available: install Tcl (tclsh), then re-run make" >&2; exit 1; \
	  elif [ "$$(id -u)" = 0 ]; then sh -c '$(APT_TCL)'; \
	  elif command -v sudo >/dev/null 2>&1; then sudo sh -c '$(APT_TCL)'; \
	  else echo "tclsh is missing: install Tcl (e.g. apt-get install tcl as root), then re-run make" >&2; exit 1; fi; }
	@command -v tclsh >/dev/null 2>&1 || { echo "tclsh is still missing after installing tcl" >&2; exit 1; }
	@# Optional: ccache lets every Verilator build reuse the compiled simulator runtime (sim/verilator.py).
	@command -v ccache >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y -qq ccache >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -qq ccache; } >/dev/null 2>&1 \
	  || echo "ccache not installed (optional): Verilator builds take longer" >&2

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) --no-deps finn-plus==1.6.1
	$(PIP) -e ".[dev]"
	touch $(STAMP)

run: install
	$(VENV)/bin/sigmabranch demo --out runs/demo

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=40

clean:
	rm -rf runs build .pytest_cache
