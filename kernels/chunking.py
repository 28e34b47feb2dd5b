"""Pieces shared by the chunked linear recurrences (gated delta rule, DeltaNet, Mamba2 SSD).

All of them write a key-by-value state S [K, V] per head with a scalar log-decay per token. Split
into chunks of C tokens, with G the in-chunk cumulative log-decay, each chunk is

  U  = u_base - w S                       (delta rule; w = 0 for SSD)
  O  = (q e^G) S + P U                    P = tril(q k^T * e^(G_t - G_i)), diagonal included
  S' = e^(G_last) S + (k e^(G_last - G))^T U

so everything but a short scan over chunks is batched matrix products over all chunks at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED_LOG = -1e30  # replaces masked log-decay differences *before* exp: no inf, no inf*0 NaN


def pad_time(x: jax.Array, chunk: int) -> jax.Array:
    """Zero-pad axis 1 (time) to a multiple of `chunk`: zero gates and inputs are identity steps."""
    pad = -x.shape[1] % chunk
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, H, ...] (T a multiple of chunk) -> [B, H, N, C, ...] in fp32."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // chunk, chunk, H, *x.shape[3:]).astype(jnp.float32)
    return jnp.moveaxis(x, 3, 1)


def from_chunks(x_BHNCV: jax.Array, length: int) -> jax.Array:
    """[B, H, N, C, V] -> [B, T, H, V], cropped to `length`."""
    B, H, N, C, V = x_BHNCV.shape
    return jnp.moveaxis(x_BHNCV, 1, 3).reshape(B, N * C, H, V)[:, :length]


def decay_matrix(G_BHNC: jax.Array, *, strict: bool) -> jax.Array:
    """e^(G_t - G_i) on the lower triangle (t > i if strict, else t >= i), 0 above it."""
    C = G_BHNC.shape[-1]
    t, i = jnp.arange(C)[:, None], jnp.arange(C)[None, :]
    visible = t > i if strict else t >= i
    diff = G_BHNC[..., :, None] - G_BHNC[..., None, :]
    return jnp.where(visible, jnp.exp(jnp.where(visible, diff, MASKED_LOG)), 0.0)


def chunk_terms(q, k, G, scale: float, precision):
    """The per-chunk terms that do not depend on the state: q e^G, P, k e^(G_last - G), e^G_last."""
    qs = q * scale
    P = jnp.einsum("...tk,...ik->...ti", qs, k, precision=precision)
    P = P * decay_matrix(G, strict=False)
    G_last = G[..., -1:]
    return (
        qs * jnp.exp(G)[..., None],
        P,
        k * jnp.exp(G_last - G)[..., None],
        jnp.exp(G_last[..., 0]),
    )


def inter_chunk_scan(u_base, w, qg, P, kd, decay, initial_state, precision):
    """Scan the state across chunks (pure JAX). Inputs [B, H, N, ...]; returns (O, final S).

    `w=None` means no delta correction (SSD): U = u_base, and that product is skipped.
    """

    def body(S, chunk):
        u_base_c, w_c, qg_c, P_c, kd_c, decay_c = chunk
        U = u_base_c
        if w_c is not None:
            U = U - jnp.einsum("BHCK,BHKV->BHCV", w_c, S, precision=precision)
        O = jnp.einsum("BHCK,BHKV->BHCV", qg_c, S, precision=precision)
        O = O + jnp.einsum("BHCI,BHIV->BHCV", P_c, U, precision=precision)
        S = decay_c[..., None, None] * S + jnp.einsum(
            "BHCK,BHCV->BHKV", kd_c, U, precision=precision
        )
        return S, O

    xs = tuple(None if x is None else jnp.moveaxis(x, 2, 0) for x in (u_base, w, qg, P, kd, decay))
    final, O_NBHCV = jax.lax.scan(body, initial_state, xs)
    return jnp.moveaxis(O_NBHCV, 0, 2), final


def scan_for(impl: str):
    """The inter-chunk scan of an impl: pure JAX ("chunked") or the Pallas kernels ("pallas")."""
    if impl == "pallas":
        from kernels import delta_rule_pallas  # Pallas is imported only when asked for

        return delta_rule_pallas.inter_chunk_scan
    return inter_chunk_scan
