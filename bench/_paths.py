"""Import first in every bench script. `bench/kernels.py` (the name the kernels issue asks for)
would shadow the `kernels` package, because a script's own folder leads `sys.path`: bind the package
while bench/ is off the path, then put bench/ back at the end for `common`."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import kernels  # noqa: E402,F401  - binds the package name before bench/ returns to the path

sys.path.append(str(HERE))


def cpu_unless_told() -> None:
    """Call before importing jax: run on the CPU unless JAX_PLATFORMS says otherwise (jax[tpu]'s
    libtpu, installed here without a chip, would print initialisation errors first)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
