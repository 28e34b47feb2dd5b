"""Whether Pallas kernels run compiled (TPU) or in interpret mode (anywhere else).

By default a kernel is compiled when JAX's default backend is a TPU and interpreted otherwise.
`compiled_for_tpu()` forces real Mosaic lowering, for ahead-of-time compiles against a TPU
topology from a CPU host (tests/test_tpu_compile.py).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_FORCE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("pallas_interpret", default=None)


def interpret() -> bool:
    forced = _FORCE.get()
    if forced is not None:
        return forced
    return jax.default_backend() != "tpu"


@contextlib.contextmanager
def compiled_for_tpu():
    token = _FORCE.set(False)
    try:
        yield
    finally:
        _FORCE.reset(token)
