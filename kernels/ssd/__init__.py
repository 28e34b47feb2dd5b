"""Mamba2's state-space dual (SSD) recurrence as AHN-Mamba2 uses it: one B/C group per head, no D.

  h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t;   y_t = C_t h_t
x [B, T, N, E], dt [B, T, N] (after softplus), A [N] (negative), the inputs named B and C
[B, T, N, H] (Mamba2's names, not the batch and chunk letters), state [B, N, H, E].

It is the chunked recurrence of kernels/common/chunking.py with keys B, values dt x, queries C,
log-decay dt A and no delta correction (w = 0), so it shares the Pallas inter-chunk scan with the
delta rule. impl="recurrent" is the oracle (`naive`); impl="chunked" (the default, shaped for
XLA:CPU) does each chunk's work inside the scan step, a few heads at a time (`chunked`);
impl="batched" (shaped for GPU/TPU) computes the state-free terms of all chunks at once and scans
only the state over chunks in XLA, an elementwise step here (`batched`,
kernels/common/inter_chunk_xla.py); impl="pallas" computes the same terms and scans with the
Pallas kernel (`pallas`).
"""

from __future__ import annotations

import jax

from kernels.common import chunking
from kernels.ssd import batched, chunked, naive
from kernels.ssd.naive import ssd_step

IMPLS = ("recurrent", "chunked", "batched", "pallas")

__all__ = ["IMPLS", "ssd", "ssd_step"]


def ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    initial_state=None,
    output_final_state=False,
    chunk_size=256,
    impl="chunked",
    precision=jax.lax.Precision.HIGHEST,
):
    """SSD over a sequence. Returns (y [B, T, N, E] in x's dtype, final state [B, N, H, E] or
    None). impl: one of `IMPLS` (module docstring); `precision` applies to the chunked forms'
    matmuls."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    b, T, N, E = x.shape
    H = B.shape[-1]
    if dt.shape != (b, T, N) or A.shape != (N,):
        raise ValueError(f"dt must be {(b, T, N)} and A {(N,)}; got {dt.shape} and {A.shape}")
    if B.shape != (b, T, N, H) or C.shape != B.shape:
        raise ValueError(f"B and C must both be {(b, T, N, H)}; got {B.shape} and {C.shape}")
    state_shape = (b, N, H, E)
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(f"initial_state must be {state_shape}; got {initial_state.shape}")
    state = chunking.initial_state(initial_state, state_shape, (x, dt, A, B, C))
    if impl == "recurrent":
        y, final = naive.recurrent(x, dt, A, B, C, state)
    elif impl == "chunked":
        y, final = chunked.chunked(x, dt, A, B, C, state, chunk_size, precision)
    elif impl == "batched":
        y, final = batched.batched(x, dt, A, B, C, state, chunk_size, precision)
    else:
        from kernels.ssd import pallas  # Pallas is imported only when asked for

        y, final = pallas.chunked_pallas(x, dt, A, B, C, state, chunk_size, precision)
    return y.astype(x.dtype), (final if output_final_state else None)
