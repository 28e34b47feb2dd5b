"""`kernels/` stands alone: nothing in it imports ahn_jax or flax, in its source or at runtime."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
FORBIDDEN = ("ahn_jax", "flax")


def imported_modules(source: str) -> set[str]:
    """The absolute module names a Python source imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def forbidden(names) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in FORBIDDEN)


def test_the_check_sees_every_kind_of_import():
    source = "import flax.nnx\ndef f():\n    from ahn_jax.model import cache\nimport jax\n"
    assert forbidden(imported_modules(source)) == ["ahn_jax.model", "flax.nnx"]
    assert forbidden(imported_modules("from kernels.common import chunking\n")) == []


def test_no_kernel_source_imports_ahn_jax_or_flax():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) >= 15, files  # the tree was found
    bad = {
        str(path.relative_to(KERNELS.parent)): found
        for path in files
        if (found := forbidden(imported_modules(path.read_text())))
    }
    assert not bad, f"kernels/ must not import {FORBIDDEN}: {bad}"


def test_importing_every_kernel_module_loads_neither():
    """In a fresh interpreter, import kernels and every module under it (the Pallas ones too),
    then look at what got loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import kernels\n"
        "for m in pkgutil.walk_packages(kernels.__path__, 'kernels.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "assert kernels.__file__.startswith(sys.argv[1]), kernels.__file__\n"
        "print('loaded:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(KERNELS)],
        cwd=KERNELS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"importing kernels loaded a forbidden module:\n{result.stdout}{result.stderr}")
