"""Gated delta rule (Gated DeltaNet) and delta rule (DeltaNet), layout [B, T, N, H] as in fla.

Per head, with a fp32 state S [H, E]:
  S <- exp(g_t) S;  u = beta_t (v_t - k_t S);  S <- S + k_t^T u;  o_t = scale q_t S.

impl="recurrent" scans token by token (`naive`, the oracle; a single token, as in decoding, takes
the two-pass `step`); impl="chunked" (the default, shaped for XLA:CPU) is the WY/UT form with each
chunk's work inside one scan over chunks (`chunked`); impl="batched" (shaped for GPU/TPU) computes
the state-free terms of all chunks at once and scans only the state over chunks in XLA (`batched`,
kernels/common/inter_chunk_xla.py); impl="pallas" computes the same terms and runs that scan as a
Pallas TPU kernel (`pallas`). The math: docs/kernels.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common import chunking
from kernels.delta_rule import batched, chunked, naive, step

IMPLS = ("recurrent", "chunked", "batched", "pallas")

__all__ = ["IMPLS", "delta_rule", "gated_delta_rule", "gated_delta_rule_step"]


def _check(q, k, v, g, beta, initial_state, impl, chunk_size):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, N, H]; got {q.shape} and {k.shape}")
    B, T, N, _ = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, N):
        raise ValueError(f"v must be [B, T, N, E] with B, T, N = {(B, T, N)}; got {v.shape}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, N):
            raise ValueError(f"{name} must be [B, T, N] = {(B, T, N)}; got {x.shape}")
    state_shape = (B, N, q.shape[-1], v.shape[-1])
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(f"initial_state must be {state_shape}; got {initial_state.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


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
    """Gated delta rule over a sequence. Returns (o [B, T, N, E] in v's dtype, final state or None).

    q, k [B, T, N, H], v [B, T, N, E]; g [B, T, N] is a log-decay (<= 0), beta [B, T, N] the write
    strength, states [B, N, H, E] fp32. `precision` applies to the chunked forms' matmuls (HIGHEST
    keeps fp32 exact on TPU). impl: one of `IMPLS` (module docstring).
    """
    _check(q, k, v, g, beta, initial_state, impl, chunk_size)
    B, _, N, H = q.shape
    E = v.shape[-1]
    scale = H**-0.5 if scale is None else scale
    if use_qk_l2norm and impl != "chunked":  # the chunked step normalises in cache
        q, k = naive.l2_normalize(q), naive.l2_normalize(k)
    state = chunking.initial_state(initial_state, (B, N, H, E), (q, k, v, g, beta))
    if impl == "recurrent" and q.shape[1] == 1:
        o, final = step.step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state, scale)
        o = o[:, None]
    elif impl == "recurrent":
        o, final = naive.recurrent(q, k, v, g, beta, state, scale)
    elif impl == "chunked":
        o, final = chunked.chunked(
            q, k, v, g, beta, state, scale, chunk_size, precision, use_qk_l2norm
        )
    elif impl == "batched":
        o, final = batched.batched(q, k, v, g, beta, state, scale, chunk_size, precision)
    else:
        from kernels.delta_rule import pallas  # Pallas is imported only when asked for

        o, final = pallas.chunked_pallas(q, k, v, g, beta, state, scale, chunk_size, precision)
    return o.astype(v.dtype), (final if output_final_state else None)


def delta_rule(q, k, v, beta, **kwargs):
    """DeltaNet: the gated delta rule with no decay (g = 0)."""
    return gated_delta_rule(q, k, v, jnp.zeros(beta.shape, jnp.float32), beta, **kwargs)


def gated_delta_rule_step(q, k, v, g, beta, state, *, scale=None, use_qk_l2norm=False):
    """One token for decoding: q, k [B, N, H], v [B, N, E], g, beta [B, N], state [B, N, H, E] fp32.

    Returns (o [B, N, E] in v's dtype, new state fp32); equal to one step of the recurrence.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = naive.l2_normalize(q), naive.l2_normalize(k)
    o, new_state = step.step(q, k, v, g, beta, state.astype(jnp.float32), scale)
    return o.astype(v.dtype), new_state
