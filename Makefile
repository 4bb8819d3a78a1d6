# Common commands. Each target sets up what it needs on a fresh machine (Python 3.11+).
VENV ?= .venv
PY := $(VENV)/bin/python
SCENARIO ?= scenarios/quickstart.yaml

.PHONY: setup system-deps run test lint format bench clean image

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

# Debian packages the tests use: strace (no-outbound-connection proof), chromium (report and web UI checks).
system-deps:
	bash scripts/install-system-deps.sh

run: setup
	$(VENV)/bin/harness run $(SCENARIO)

test: setup system-deps
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The container image llm-load-harness:VERSION and :dev (deploy/Dockerfile; see README "Scale out").
# Needs a Docker daemon (started here when we are root); with no image registry the base is made
# locally with debootstrap.
image:
	bash scripts/build-image.sh

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
