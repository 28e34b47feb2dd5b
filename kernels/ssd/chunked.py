"""The chunked SSD in XLA: the chunk math of kernels/common/chunking.py with keys B, values dt x,
queries C, log-decay dt A and no delta correction; each chunk's work runs inside one scan over
chunks, a few heads at a time (in cache; `chunking.grouped_chunk_scan`)."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from kernels.common import chunking


def _chunk_step(S, chunk, A, *, precision):
    """One chunk of a group of n heads: S [n, H, E]; x [n, C, E], dt [n, C], B, C [n, C, H];
    A [n]."""
    x, dt, B, C = chunk
    mm = functools.partial(jnp.einsum, precision=precision)
    Cg, P, Bd, decay = chunking.chunk_terms(C, B, dt * A[:, None], 1.0, precision)
    u = dt[..., None] * x
    O = mm("...ch,...he->...ce", Cg, S) + mm("...ti,...ie->...te", P, u)
    S = decay[..., None, None] * S + mm("...ch,...ce->...he", Bd, u)
    return S, O


def chunked(x, dt, A, B, C, state, chunk_size, precision):
    """The whole sequence. Returns (y [B, T, N, E] fp32, final state [B, N, H, E])."""
    b, T, N, _ = x.shape
    heads = chunking.heads_per_group(N)
    xs = tuple(chunking.to_groups(a, chunk_size, heads) for a in (x, dt, B, C))
    A = jnp.broadcast_to(A.astype(jnp.float32), (b, N)).reshape(-1, heads)
    step = functools.partial(_chunk_step, precision=precision)
    y, final = chunking.grouped_chunk_scan(step, state, xs, (A,))
    return chunking.from_groups(y, b, T), final
