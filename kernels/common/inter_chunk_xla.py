"""The inter-chunk state scan of the chunked recurrences in XLA: `inter_chunk_scan`, the same
signature and math as kernels/common/inter_chunk_pallas.py, for impl="batched".

Everything that does not need the state entering a chunk is batched over all chunks; only the thin
state recurrence is a `lax.scan` over the Q chunks, whose step is two products of one chunk, batched
over B * N (no [C, C] work in it):

  delta rule:  U_c = u_c - w_c S_c;   S_{c+1} = decay_c S_c + kd_c^T U_c     ([C, H] x [H, E] and
                                                                              [H, C] x [C, E])
  SSD (w = 0): S_{c+1} = decay_c S_c + D_c, with D_c = kd_c^T u_c batched beforehand (elementwise)

The scan returns the state entering every chunk (and U for the delta rule); then, for all chunks at
once, O = qg S + P U. The delta rule's scan has its own VJP (`_delta_states`): a reverse scan of
two products per chunk, carrying R_c, the gradient of the state leaving chunk c (dS in the Pallas
kernel), with the cotangents dS_c^out of the saved states and dU_c^out of U:

  dU_c = dU_c^out + kd_c R_c;   R_{c-1} = decay_c R_c + dS_c^out - w_c^T dU_c
  then, batched: du = dU, dw = -dU S^T, dkd = U R^T, d decay = sum(R * S), dS_0 = R_{-1}
(the Pallas backward kernel's math, with the products that need no carry moved out of the loop).
Its residuals are the saved states and U, which the forward returns anyway. SSD's elementwise
scan is left to autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _mm(spec, a, b, precision):
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


def _delta_forward(u, w, kd, decay, S0, precision):
    def step(S, chunk):
        u_c, w_c, kd_c, decay_c = chunk
        U = u_c - _mm("...ch,...he->...ce", w_c, S, precision)
        S_next = decay_c[..., None, None] * S + _mm("...ch,...ce->...he", kd_c, U, precision)
        return S_next, (S, U)

    final, (states, U) = jax.lax.scan(step, S0, (u, w, kd, decay))
    return states, U, final


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _delta_states(u, w, kd, decay, S0, precision):
    """Chunks on the leading axis: u [Q, ..., C, E], w, kd [Q, ..., C, H], decay [Q, ...],
    S0 [..., H, E] -> (states entering each chunk [Q, ..., H, E], U [Q, ..., C, E], final S)."""
    return _delta_forward(u, w, kd, decay, S0, precision)


def _delta_states_fwd(u, w, kd, decay, S0, precision):
    states, U, final = _delta_forward(u, w, kd, decay, S0, precision)
    return (states, U, final), (w, kd, decay, states, U)


def _delta_states_bwd(precision, residuals, cotangents):
    w, kd, decay, states, U = residuals
    d_states, d_U, d_final = cotangents

    def step(R, chunk):  # R: the gradient of the state leaving this chunk
        w_c, kd_c, decay_c, dS_c, dU_c = chunk
        dU = dU_c + _mm("...ch,...he->...ce", kd_c, R, precision)
        R_prev = decay_c[..., None, None] * R + dS_c - _mm("...ch,...ce->...he", w_c, dU, precision)
        return R_prev, (dU, R)

    dS0, (dU, R) = jax.lax.scan(step, d_final, (w, kd, decay, d_states, d_U), reverse=True)
    dw = -_mm("...ce,...he->...ch", dU, states, precision)
    dkd = _mm("...ce,...he->...ch", U, R, precision)
    d_decay = jnp.sum(R * states, axis=(-2, -1))
    return dU, dw, dkd, d_decay, dS0


_delta_states.defvjp(_delta_states_fwd, _delta_states_bwd)


def _decay_states(D, decay, S0):
    """S_{c+1} = decay_c S_c + D_c elementwise; D [Q, ..., H, E], decay [Q, ...] -> (states entering
    each chunk [Q, ..., H, E], final S)."""

    def step(S, chunk):
        D_c, decay_c = chunk
        return decay_c[..., None, None] * S + D_c, S

    final, states = jax.lax.scan(step, S0, (D, decay))
    return states, final


def inter_chunk_scan(u_base, w, qg, P, kd, decay, initial_state, precision):
    """Scan the state across chunks: u_base [B, N, Q, C, E]; w (None: no delta correction, SSD),
    qg, kd [B, N, Q, C, H]; P [B, N, Q, C, C]; decay [B, N, Q] (e^G_last); initial_state
    [B, N, H, E] fp32. Returns (O [B, N, Q, C, E], final S [B, N, H, E]).

    The states entering every chunk, [B, N, Q, H, E] fp32 (H / C times the size of O), are
    materialised, as the Pallas forward saves them for its backward."""
    f32 = jnp.float32
    u_base, qg, P, kd, decay = (x.astype(f32) for x in (u_base, qg, P, kd, decay))
    S0 = initial_state.astype(f32)

    def chunks_first(x):  # [B, N, Q, ...] -> [Q, B, N, ...]: the scan's axis leading
        return jnp.moveaxis(x, 2, 0)

    if w is None:  # SSD: U = u_base does not depend on the state
        U = u_base
        D = _mm("...ch,...ce->...he", kd, U, precision)
        states, final = _decay_states(chunks_first(D), chunks_first(decay), S0)
    else:
        states, U, final = _delta_states(
            *(chunks_first(x) for x in (u_base, w.astype(f32), kd, decay)), S0, precision
        )
        U = jnp.moveaxis(U, 0, 2)
    states = jnp.moveaxis(states, 0, 2)  # [B, N, Q, H, E]
    O = _mm("...ch,...he->...ce", qg, states, precision)
    return O + _mm("...ti,...ie->...te", P, U, precision), final
