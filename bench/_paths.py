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


def cpu_deadlock_workaround() -> None:
    """Call before importing jax in scripts that run the chunked delta rule's backward: XLA:CPU
    (jax 0.10.2) can deadlock there (ahn_jax/xla_cpu.py). Other platforms do not know the flags."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if os.environ["JAX_PLATFORMS"] == "cpu":
        from ahn_jax import xla_cpu  # imports jax, which reads JAX_PLATFORMS at import: set above

        xla_cpu.add_xla_flags(*xla_cpu.DEADLOCK_WORKAROUND)
