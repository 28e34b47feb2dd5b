"""The chunked (WY/UT) gated delta rule in XLA: one scan over chunks does each chunk's work in its
step, a few heads at a time so that it stays in cache (`chunking.grouped_chunk_scan`).

Per chunk of C tokens, with the state S entering it and G the in-chunk cumulative log-decay:
  A = strictly_lower(beta k k^T * e^(G_t - G_i)),  X = (I + A)^-1 in fp32 from matrix products
  (`chunking.unit_lower_inverse`);
  U = X (beta (v - e^G k S));  O = (q e^G) S + P U;  S' = e^(G_last) S + (k e^(G_last - G))^T U.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from kernels.common import chunking
from kernels.delta_rule.naive import l2_normalize


def _chunk_step(S, chunk, *, scale, l2norm, precision):
    """One chunk of a group of n heads: S [n, H, E]; q, k [n, C, H], v [n, C, E], g, beta [n, C]."""
    q, k, v, g, beta = chunk
    if l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    C = q.shape[-2]
    mm = functools.partial(jnp.einsum, precision=precision)
    # [beta k; q] k^T * e^(G_t - G_i): A strictly lower, P with the diagonal
    lhs = jnp.concatenate([beta[..., None] * k, q * scale], axis=-2)
    A_P = chunking.masked_decayed_products(lhs, k, g, precision, strict_rows=1)
    A, P = A_P[..., :C, :], A_P[..., C:, :]
    from_start, to_end, whole = chunking.decays(g)
    eG = from_start[..., None]
    qS = mm("...ch,...he->...ce", q * (scale * eG), S)
    kS = mm("...ch,...he->...ce", k, S)
    U = mm(
        "...ti,...ie->...te",
        chunking.unit_lower_inverse(A, precision),
        beta[..., None] * (v - eG * kS),
    )
    O = qS + mm("...ti,...ie->...te", P, U)
    S = whole[..., None, None] * S + mm("...ch,...ce->...he", k * to_end[..., None], U)
    return S, O


def chunked(q, k, v, g, beta, initial_state, scale, chunk_size, precision, l2norm):
    """The whole sequence; q, k normalised inside the step if `l2norm`. Returns (o [B, T, N, E]
    fp32, final state [B, N, H, E])."""
    B, T, N, _ = q.shape
    heads = chunking.heads_per_group(N)
    xs = tuple(chunking.to_groups(x, chunk_size, heads) for x in (q, k, v, g, beta))
    step = functools.partial(_chunk_step, scale=scale, l2norm=l2norm, precision=precision)
    O, final = chunking.grouped_chunk_scan(step, initial_state, xs)
    return chunking.from_groups(O, B, T), final
