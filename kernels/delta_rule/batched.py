"""The gated delta rule in the batched chunked form, shaped for accelerators: the state-free terms
of all chunks at once (`chunk_terms`: one unit-triangular solve gives u_base and w of the WY form,
`chunking.chunk_terms` the rest), then only the thin state recurrence as a scan over chunks
(impl="batched": kernels/common/inter_chunk_xla.py, in XLA; impl="pallas": the Pallas kernel of
kernels/common/inter_chunk_pallas.py, see `pallas`).

Per chunk of C tokens, with G the in-chunk cumulative log-decay and S the state entering it:
  A = strictly_lower(beta k k^T * e^(G_t - G_i));  [u_base, w] = (I + A)^-1 [beta v, beta e^G k]
  U = u_base - w S;  O = (q e^G) S + P U;  S' = e^(G_last) S + (k e^(G_last - G))^T U.
"""

from __future__ import annotations

import jax.numpy as jnp

from kernels.common import chunking, inter_chunk_xla


def chunk_terms(q, k, v, g, beta, scale, chunk_size, precision):
    """The state-free terms of every chunk, [B, N, Q, ...] (T zero-padded to Q * C): u_base
    [.., C, E], w, qg, kd [.., C, H], P [.., C, C], decay [B, N, Q] (the arguments of
    `inter_chunk_scan` before the initial state). q, k already normalised if asked.

    The solve is `chunking.unit_lower_inverse` (matrix products only), not XLA's
    `triangular_solve`: on the CPU that is a LAPACK call which splits the batch over XLA's intra-op
    pool and can deadlock it (docs/kernels.md, "Known issue"), and products suit the MXU and
    tensor cores as well."""
    C = chunk_size
    q, k, v, g, beta = (chunking.to_chunks(chunking.pad_time(x, C), C) for x in (q, k, v, g, beta))
    G = jnp.cumsum(g, axis=-1)
    kk = jnp.einsum("...th,...ih->...ti", k, k, precision=precision)
    A = beta[..., :, None] * kk * chunking.decay_matrix(g, strict=True)
    rhs = jnp.concatenate([beta[..., None] * v, (beta * jnp.exp(G))[..., None] * k], axis=-1)
    solved = jnp.einsum(
        "...ti,...ie->...te", chunking.unit_lower_inverse(A, precision), rhs, precision=precision
    )
    u_base, w = solved[..., : v.shape[-1]], solved[..., v.shape[-1] :]
    qg, P, kd, decay = chunking.chunk_terms(q, k, g, scale, precision)
    return u_base, w, qg, P, kd, decay


def batched(q, k, v, g, beta, initial_state, scale, chunk_size, precision,
            scan=inter_chunk_xla.inter_chunk_scan):  # fmt: skip
    """q, k already normalised if asked. `scan` runs the state across chunks (the XLA scan, or
    `inter_chunk_pallas.inter_chunk_scan`). Returns (o [B, T, N, E] fp32, final state
    [B, N, H, E])."""
    terms = chunk_terms(q, k, v, g, beta, scale, chunk_size, precision)
    O, final = scan(*terms, initial_state, precision)
    return chunking.from_chunks(O, q.shape[1]), final
