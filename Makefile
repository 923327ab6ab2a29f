# The two commands: `make run` (the main job on the embedded digits data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Install torch first and pinned: a plain resolve pulls a multi-GB CUDA build.
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) --no-deps finn-plus==1.6.1
	$(PIP) -e ".[dev]"
	touch $(STAMP)

run: install
	$(VENV)/bin/sigmabranch demo --out runs/demo

test: install
	$(PY) -m pytest -q -n 2 --durations=15

clean:
	rm -rf runs build .pytest_cache
