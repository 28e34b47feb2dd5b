"""The SSD with the Pallas inter-chunk scan: the state-free terms of all chunks at once in XLA, then
the same Pallas state scan as the delta rule with no delta correction (w = 0;
kernels/common/inter_chunk_pallas.py; interpret mode off TPU)."""

from __future__ import annotations

import jax.numpy as jnp

from kernels.common import chunking, inter_chunk_pallas


def chunked_pallas(x, dt, A, B, C, state, chunk_size, precision):
    """Returns (y [B, T, N, E] fp32, final state [B, N, H, E])."""
    T = x.shape[1]
    x, dt, B, C = (chunking.to_chunks(chunking.pad_time(a, chunk_size), chunk_size)
                   for a in (x, dt, B, C))  # fmt: skip
    g = dt * A.astype(jnp.float32)[None, :, None, None]
    u_base = dt[..., None] * x
    qg, P, kd, decay = chunking.chunk_terms(C, B, g, 1.0, precision)
    y, final = inter_chunk_pallas.inter_chunk_scan(
        u_base, None, qg, P, kd, decay, state, precision
    )  # no delta correction
    return chunking.from_chunks(y, T), final
