# Common commands. Each target sets up what it needs on a fresh machine (Python 3.11+).
VENV ?= .venv
PY := $(VENV)/bin/python
SCENARIO ?= scenarios/quickstart.yaml

.PHONY: setup system-deps run test test-models lint format bench clean image

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

# Opt-in, not in `make test`/CI: the two tests that need the `models` extra (torch and the ONNX
# GenAI builder) to rebuild the shipped tiny model byte for byte and to build the 32 M small-chat
# model. Measured: ~2 min and 1.3 GB on every run, to guard tools/build_tiny_model.py only.
MODELS_VENV ?= .venv-models
test-models: setup
	test -x $(MODELS_VENV)/bin/python || python3 -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/python -m pip install -q torch==2.13.0 transformers==5.24.0 tokenizers==0.23.3 \
		onnxruntime-genai==0.18.0 onnx onnx-ir gguf accelerate
	test -f $(HOME)/.cache/llm-load-harness/models/small-chat/genai_config.json || \
		$(MODELS_VENV)/bin/python tools/build_tiny_model.py --size small
	HARNESS_MODELS_PYTHON=$(MODELS_VENV)/bin/python $(PY) -m pytest \
		tests/test_foundry_host.py::test_build_is_reproducible \
		tests/test_bench.py::test_two_local_models_of_different_sizes_on_embedded_foundry_hosts

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
