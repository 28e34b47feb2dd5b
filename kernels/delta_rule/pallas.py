"""The gated delta rule with the Pallas inter-chunk scan: the state-free terms of all chunks at once
in XLA (one unit-triangular solve gives u_base and w of the WY form), then the state scan as a
Pallas TPU kernel (kernels/common/inter_chunk_pallas.py; interpret mode off TPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common import chunking, inter_chunk_pallas


def chunked_pallas(q, k, v, g, beta, initial_state, scale, chunk_size, precision):
    """q, k already normalised if asked. Returns (o [B, T, N, E] fp32, final state [B, N, H, E])."""
    T = q.shape[1]
    C = chunk_size
    q, k, v, g, beta = (chunking.to_chunks(chunking.pad_time(x, C), C) for x in (q, k, v, g, beta))
    G = jnp.cumsum(g, axis=-1)
    kk = jnp.einsum("...th,...ih->...ti", k, k, precision=precision)
    A = beta[..., :, None] * kk * chunking.decay_matrix(g, strict=True)
    eye = jnp.eye(C, dtype=jnp.float32)
    rhs = jnp.concatenate([beta[..., None] * v, (beta * jnp.exp(G))[..., None] * k], axis=-1)
    solved = jax.lax.linalg.triangular_solve(
        eye + A, rhs, left_side=True, lower=True, unit_diagonal=True
    )
    u_base, w = solved[..., : v.shape[-1]], solved[..., v.shape[-1] :]
    qg, P, kd, decay = chunking.chunk_terms(q, k, g, scale, precision)
    O, final = inter_chunk_pallas.inter_chunk_scan(
        u_base, w, qg, P, kd, decay, initial_state, precision
    )
    return chunking.from_chunks(O, T), final
