# The README's two commands: `make serve` (main job) and `make test` (whole suite).
# Both run an idempotent setup first: ./.venv, the package with its extras, the default model.
PY      := .venv/bin/python
STAMP   := .venv/.setup-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup model web wheel serve test test-node typecheck bench clean sysdeps-node sysdeps-test

# System packages: Node.js and npm (Pyodide, onnxruntime-web: `make web`) and, for the tests,
# Debian's Chromium. Installed with apt-get when run as root; otherwise make stops at once and
# says what to run, before spending minutes on the rest.
define need_packages
	@need=""; for p in $(1); do case $$p in \
	  nodejs) command -v node >/dev/null || need="$$need nodejs";; \
	  npm) command -v npm >/dev/null || need="$$need npm";; \
	  chromium) [ -x /usr/bin/chromium ] || need="$$need chromium";; esac; done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; \
	  else echo "missing system packages:$$need; run: sudo apt-get install -y$$need" >&2; exit 1; fi; fi
endef

sysdeps-node:
	$(call need_packages,nodejs npm)

sysdeps-test:
	$(call need_packages,nodejs npm chromium)

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the CPU build on disk: a plain resolver would pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[export,native,server,test]'
	touch $(STAMP)

model: setup
	.venv/bin/realm-web pull

# The JavaScript side: Pyodide and onnxruntime-web from npm (package-lock.json), and the core's
# pure-Python wheel that Pyodide installs.
web: sysdeps-node wasm/node_modules/.stamp wasm/dist/pywheels/.stamp
	$(PY) tools/build_core_wheel.py
	$(PY) tools/build_web.py

# pytest and its pure-Python dependencies, for running the core's tests inside Pyodide
PYODIDE_TEST_WHEELS := pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0
wasm/dist/pywheels/.stamp: Makefile
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d wasm/dist/pywheels $(PYODIDE_TEST_WHEELS)
	touch $@

wasm/node_modules/.stamp: wasm/package.json wasm/package-lock.json
	cd wasm && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The main job: the server with the default model on 127.0.0.1:8000, and the chat page at / (SERVE_ARGS for more, e.g.
# SERVE_ARGS="--config tenants.toml --host 0.0.0.0 --log-level info").
# A wheel that carries the chat page (pip users get `realm-web serve`'s page with no npm)
wheel: web
	$(PY) tools/build_wheel.py

serve: model web
	.venv/bin/realm-web serve $(SERVE_ARGS)

# The npm package realm-web (wasm/) under node --test: real Pyodide, onnxruntime-web and
# onnxruntime-node on the default model, against the native Python engine.
test-node: model web
	cd wasm && REALM_WEB_PYTHON=$(abspath $(PY)) node --test --test-concurrency=1 test/

typecheck: setup
	$(PY) -m mypy --strict

test: sysdeps-test model web test-node
	$(PY) -m mypy --strict
	$(PY) -m pytest -q -ra

bench: model
	$(PY) -m pip install -q -e '.[export,native,test,bench]'
	$(PY) bench/cpu_decode.py
	$(PY) bench/batching.py

clean:
	rm -rf .venv build *.egg-info
