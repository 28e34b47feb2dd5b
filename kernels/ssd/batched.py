"""The SSD in the batched chunked form, shaped for accelerators: the state-free terms of all chunks
at once (`chunk_terms`), then only the state recurrence as a scan over chunks (impl="batched":
kernels/common/inter_chunk_xla.py, where with no delta correction the scan step is elementwise;
impl="pallas": the Pallas kernel, see `pallas`). Keys B, values dt x, queries C, log-decay dt A."""

from __future__ import annotations

import jax.numpy as jnp

from kernels.common import chunking, inter_chunk_xla


def chunk_terms(x, dt, A, B, C, chunk_size, precision):
    """The state-free terms of every chunk, [b, N, Q, ...] (T zero-padded to Q * chunk): u_base
    = dt x [.., C, E], w = None (no delta correction), qg, kd [.., C, H], P [.., C, C], decay
    [b, N, Q] (the arguments of `inter_chunk_scan` before the initial state)."""
    x, dt, B, C = (chunking.to_chunks(chunking.pad_time(a, chunk_size), chunk_size)
                   for a in (x, dt, B, C))  # fmt: skip
    g = dt * A.astype(jnp.float32)[None, :, None, None]
    qg, P, kd, decay = chunking.chunk_terms(C, B, g, 1.0, precision)
    return dt[..., None] * x, None, qg, P, kd, decay


def batched(x, dt, A, B, C, state, chunk_size, precision, scan=inter_chunk_xla.inter_chunk_scan):
    """`scan` runs the state across chunks (the XLA scan, or `inter_chunk_pallas.inter_chunk_scan`).
    Returns (y [b, T, N, E] fp32, final state [b, N, H, E])."""
    terms = chunk_terms(x, dt, A, B, C, chunk_size, precision)
    y, final = scan(*terms, state, precision)
    return chunking.from_chunks(y, x.shape[1]), final
