"""Gated delta rule (Gated DeltaNet) and delta rule (DeltaNet), layout [B, T, H, D] as in fla.

Per head, with a fp32 state S [K, V]:
  S <- exp(g_t) S;  u = beta_t (v_t - k_t S);  S <- S + k_t^T u;  o_t = scale q_t S.

impl="recurrent" scans token by token (the oracle); impl="chunked" uses the WY/UT form: per chunk
of C tokens, T = (I + strictly_lower(beta k k^T e^(G_t - G_i)))^-1 in fp32 from matrix products
(`chunking.unit_lower_inverse`), and one scan over chunks does each chunk's work in its step,
a few heads at a time so that it stays in cache (`chunking.grouped_chunk_scan`):
  U = T (beta (v - e^G k S));  O = (q e^G) S + P U;  S' = e^(G_last) S + (k e^(G_last - G))^T U.
impl="pallas" computes the state-free terms for all chunks at once (one unit-triangular solve) and
runs the inter-chunk scan as a Pallas TPU kernel (kernels/delta_rule_pallas.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import chunking, delta_rule_reference

IMPLS = ("recurrent", "chunked", "pallas")


def _check(q, k, v, g, beta, initial_state, impl, chunk_size):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K]; got {q.shape} and {k.shape}")
    B, T, H, _ = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {(B, T, H)}; got {v.shape}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}; got {x.shape}")
    state_shape = (B, H, q.shape[-1], v.shape[-1])
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(f"initial_state must be {state_shape}; got {initial_state.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _chunk_step(S, chunk, *, scale, l2norm, precision):
    """One chunk of a group of heads: S [h, K, V]; q, k [h, C, K], v [h, C, V], g, beta [h, C]."""
    q, k, v, g, beta = chunk
    if l2norm:
        q, k = delta_rule_reference.l2_normalize(q), delta_rule_reference.l2_normalize(k)
    C = q.shape[-2]
    mm = functools.partial(jnp.einsum, precision=precision)
    # [beta k; q] k^T * e^(G_t - G_i): A strictly lower, P with the diagonal
    lhs = jnp.concatenate([beta[..., None] * k, q * scale], axis=-2)
    A_P = chunking.masked_decayed_products(lhs, k, g, precision, strict_rows=1)
    A, P = A_P[..., :C, :], A_P[..., C:, :]
    from_start, to_end, whole = chunking.decays(g)
    eG = from_start[..., None]
    qS = mm("...ck,...kv->...cv", q * (scale * eG), S)
    kS = mm("...ck,...kv->...cv", k, S)
    U = mm(
        "...ti,...iv->...tv",
        chunking.unit_lower_inverse(A, precision),
        beta[..., None] * (v - eG * kS),
    )
    O = qS + mm("...ti,...iv->...tv", P, U)
    S = whole[..., None, None] * S + mm("...ck,...cv->...kv", k * to_end[..., None], U)
    return S, O


def _chunked(q, k, v, g, beta, initial_state, scale, chunk_size, precision, l2norm):
    B, T, H, _ = q.shape
    heads = chunking.heads_per_group(H)
    xs = tuple(chunking.to_groups(x, chunk_size, heads) for x in (q, k, v, g, beta))
    step = functools.partial(_chunk_step, scale=scale, l2norm=l2norm, precision=precision)
    O, final = chunking.grouped_chunk_scan(step, initial_state, xs)
    return chunking.from_groups(O, B, T), final


def _chunked_pallas(q, k, v, g, beta, initial_state, scale, chunk_size, precision, scan_impl):
    T = q.shape[1]
    C = chunk_size
    q, k, v, g, beta = (chunking.to_chunks(chunking.pad_time(x, C), C) for x in (q, k, v, g, beta))
    G = jnp.cumsum(g, axis=-1)
    kk = jnp.einsum("...tk,...ik->...ti", k, k, precision=precision)
    A = beta[..., :, None] * kk * chunking.decay_matrix(g, strict=True)
    eye = jnp.eye(C, dtype=jnp.float32)
    rhs = jnp.concatenate([beta[..., None] * v, (beta * jnp.exp(G))[..., None] * k], axis=-1)
    solved = jax.lax.linalg.triangular_solve(
        eye + A, rhs, left_side=True, lower=True, unit_diagonal=True
    )
    u_base, w = solved[..., : v.shape[-1]], solved[..., v.shape[-1] :]
    qg, P, kd, decay = chunking.chunk_terms(q, k, g, scale, precision)
    O, final = scan_impl(u_base, w, qg, P, kd, decay, initial_state, precision)
    return chunking.from_chunks(O, T), final


def gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm=False,
    chunk_size=64,
    impl="chunked",
    precision=jax.lax.Precision.HIGHEST,
):
    """Gated delta rule over a sequence. Returns (o [B,T,H,V] in v's dtype, final state or None).

    g [B,T,H] is a log-decay (<= 0), beta [B,T,H] the write strength, states [B,H,K,V] fp32.
    `precision` applies to the chunked form's matmuls (HIGHEST keeps fp32 exact on TPU).
    """
    _check(q, k, v, g, beta, initial_state, impl, chunk_size)
    B, _, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if use_qk_l2norm and impl != "chunked":  # the chunked step normalises in cache
        q, k = delta_rule_reference.l2_normalize(q), delta_rule_reference.l2_normalize(k)
    state = chunking.initial_state(initial_state, (B, H, K, V), (q, k, v, g, beta))
    if impl == "recurrent":
        o, final = delta_rule_reference.recurrent(q, k, v, g, beta, state, scale)
    elif impl == "chunked":
        o, final = _chunked(q, k, v, g, beta, state, scale, chunk_size, precision, use_qk_l2norm)
    else:
        o, final = _chunked_pallas(
            q, k, v, g, beta, state, scale, chunk_size, precision, chunking.scan_for(impl)
        )
    return o.astype(v.dtype), (final if output_final_state else None)


def delta_rule(q, k, v, beta, **kwargs):
    """DeltaNet: the gated delta rule with no decay (g = 0)."""
    return gated_delta_rule(q, k, v, jnp.zeros(beta.shape, jnp.float32), beta, **kwargs)


def gated_delta_rule_step(q, k, v, g, beta, state, *, scale=None, use_qk_l2norm=False):
    """One token for decoding: q, k [B,H,K], v [B,H,V], g, beta [B,H], state [B,H,K,V] fp32.

    Returns (o [B,H,V] in v's dtype, new state fp32); equal to one step of the recurrence.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = delta_rule_reference.l2_normalize(q), delta_rule_reference.l2_normalize(k)
    o, new_state = delta_rule_reference.step(q, k, v, g, beta, state.astype(jnp.float32), scale)
    return o.astype(v.dtype), new_state
