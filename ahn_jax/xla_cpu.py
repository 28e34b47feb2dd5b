"""The XLA:CPU flags every CPU run of this project uses, in one place.

They work around an XLA:CPU deadlock (jax 0.10.2) seen on 2 cores in the backward pass of the
chunked delta rule at B*H*chunks >= 128; see docs/kernels.md. Other platforms do not need them,
and an XLA that does not know a flag aborts, so they are only ever added for CPU runs.

XLA reads `XLA_FLAGS` when JAX creates its first backend, not at `import jax` (checked: a flag
added after `import ahn_jax` still takes effect), so `add_xla_flags` works at any point before the
first computation or `jax.devices()`. This module imports nothing itself: run as a script
(`python ahn_jax/xla_cpu.py`, as the Makefile does) it prints `$XLA_FLAGS` with the workaround
added, without importing JAX.
"""

from __future__ import annotations

import os

DEADLOCK_WORKAROUND = (
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_experimental_ynn_fusion_type=",
)


def with_flags(xla_flags: str, flags) -> str:
    """`xla_flags` with each of `flags` appended whose name (the part before "=") it lacks: a value
    already set, by the user for example, is kept."""
    for flag in flags:
        if flag.split("=")[0] not in {given.split("=")[0] for given in xla_flags.split()}:
            xla_flags = f"{xla_flags} {flag}".strip()
    return xla_flags


def add_xla_flags(*flags: str) -> None:
    """Add `flags` to the environment's XLA_FLAGS (see `with_flags`); call before JAX makes its
    first backend."""
    os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), flags)


if __name__ == "__main__":
    print(with_flags(os.environ.get("XLA_FLAGS", ""), DEADLOCK_WORKAROUND))
