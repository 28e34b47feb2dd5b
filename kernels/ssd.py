"""Mamba2's state-space dual (SSD) recurrence as AHN-Mamba2 uses it: one B/C group per head, no D.

  h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t;   y_t = C_t h_t
x [B,T,H,P], dt [B,T,H] (after softplus), A [H] (negative), B and C [B,T,H,N], state [B,H,N,P].

It is the chunked recurrence of kernels/chunking.py with keys B, values dt x, queries C, log-decay
dt A and no delta correction (w = 0), so it shares the inter-chunk scan (and its Pallas kernel).
impl="chunked" does each chunk's work inside the scan step, a few heads at a time (in cache; see
kernels/chunking.py); impl="pallas" batches the state-free terms and scans with the Pallas kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import chunking
from kernels.delta_rule_reference import checkpointed_scan

IMPLS = ("recurrent", "chunked", "pallas")


def ssd_step(x, dt, A, B, C, state):
    """One token: x [b,H,P], dt [b,H], A [H], B, C [b,H,N], state [b,H,N,P] -> (y, new state)."""
    f32 = jnp.float32
    dt = dt.astype(f32)
    decay = jnp.exp(dt * A.astype(f32))
    write = jnp.einsum("bhn,bhp->bhnp", B.astype(f32), dt[..., None] * x.astype(f32))
    state = decay[..., None, None] * state.astype(f32) + write
    y = jnp.einsum("bhn,bhnp->bhp", C.astype(f32), state, precision="highest")
    return y.astype(x.dtype), state


def _recurrent(x, dt, A, B, C, state):
    def body(h, inputs):
        x_t, dt_t, B_t, C_t = inputs
        y, h = ssd_step(x_t, dt_t, A, B_t, C_t, h)
        return h, y

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (x.astype(jnp.float32), dt, B, C))
    final, y = checkpointed_scan(body, state, xs)
    return jnp.moveaxis(y, 0, 1), final


def _chunk_step(S, chunk, A, *, precision):
    """One chunk of a group of heads: S [h, N, P]; x [h, C, P], dt [h, C], B, C [h, C, N]; A [h]."""
    x, dt, B, C = chunk
    mm = functools.partial(jnp.einsum, precision=precision)
    Cg, P, Bd, decay = chunking.chunk_terms(C, B, dt * A[:, None], 1.0, precision)
    u = dt[..., None] * x
    O = mm("...cn,...np->...cp", Cg, S) + mm("...ti,...ip->...tp", P, u)
    S = decay[..., None, None] * S + mm("...cn,...cp->...np", Bd, u)
    return S, O


def _chunked(x, dt, A, B, C, state, chunk_size, precision):
    b, T, H, _ = x.shape
    heads = chunking.heads_per_group(H)
    xs = tuple(chunking.to_groups(a, chunk_size, heads) for a in (x, dt, B, C))
    A = jnp.broadcast_to(A.astype(jnp.float32), (b, H)).reshape(-1, heads)
    step = functools.partial(_chunk_step, precision=precision)
    y, final = chunking.grouped_chunk_scan(step, state, xs, (A,))
    return chunking.from_groups(y, b, T), final


def _chunked_pallas(x, dt, A, B, C, state, chunk_size, precision, scan_impl):
    T = x.shape[1]
    x, dt, B, C = (chunking.to_chunks(chunking.pad_time(a, chunk_size), chunk_size)
                   for a in (x, dt, B, C))  # fmt: skip
    g = dt * A.astype(jnp.float32)[None, :, None, None]
    u_base = dt[..., None] * x
    qg, P, kd, decay = chunking.chunk_terms(C, B, g, 1.0, precision)
    y, final = scan_impl(u_base, None, qg, P, kd, decay, state, precision)  # no delta correction
    return chunking.from_chunks(y, T), final


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
    """SSD over a sequence. Returns (y [B,T,H,P] in x's dtype, final state [B,H,N,P] or None)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    b, T, H, P = x.shape
    N = B.shape[-1]
    if dt.shape != (b, T, H) or A.shape != (H,):
        raise ValueError(f"dt must be {(b, T, H)} and A {(H,)}; got {dt.shape} and {A.shape}")
    if B.shape != (b, T, H, N) or C.shape != B.shape:
        raise ValueError(f"B and C must both be {(b, T, H, N)}; got {B.shape} and {C.shape}")
    state_shape = (b, H, N, P)
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(f"initial_state must be {state_shape}; got {initial_state.shape}")
    state = chunking.initial_state(initial_state, state_shape, (x, dt, A, B, C))
    if impl == "recurrent":
        y, final = _recurrent(x, dt, A, B, C, state)
    elif impl == "chunked":
        y, final = _chunked(x, dt, A, B, C, state, chunk_size, precision)
    else:
        y, final = _chunked_pallas(
            x, dt, A, B, C, state, chunk_size, precision, chunking.scan_for(impl)
        )
    return y.astype(x.dtype), (final if output_final_state else None)
