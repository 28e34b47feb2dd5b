"""Whether Pallas kernels run compiled (TPU) or in interpret mode (anywhere else).

By default a kernel is compiled when JAX's default backend is a TPU and interpreted otherwise.
`compiled_for_tpu()` forces real Mosaic lowering, for ahead-of-time compiles against a TPU
topology from a CPU host (kernels/common/tpu_aot.py); `vmem_limit(n)` caps our kernels' scoped
VMEM, which makes Mosaic report what a kernel really allocates.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_FORCE: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "pallas_interpret", default=None
)
_VMEM_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("vmem_limit", default=None)


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


def current_vmem_limit() -> int | None:
    return _VMEM_LIMIT.get()


@contextlib.contextmanager
def vmem_limit(limit_bytes: int):
    token = _VMEM_LIMIT.set(limit_bytes)
    try:
        yield
    finally:
        _VMEM_LIMIT.reset(token)
