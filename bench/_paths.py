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
    (jax 0.10.2) can deadlock there (docs/kernels.md). Other platforms do not know these flags."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if os.environ["JAX_PLATFORMS"] == "cpu":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
            " --xla_cpu_multi_thread_eigen=false --xla_cpu_experimental_ynn_fusion_type="
        )
