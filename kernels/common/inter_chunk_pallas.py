"""The inter-chunk state scan of the chunked recurrences as Pallas TPU kernels, with a custom VJP.

Both the delta rule and SSD run it on the state-free per-chunk terms of kernels/common/chunking.py
(`chunk_terms`), computed for all chunks at once (`batched.chunk_terms` of each family;
kernels/common/inter_chunk_xla.py is the same scan in XLA, impl="batched"). SSD has no delta
correction (w = None): its kernels are built without w and its terms, rather than fed zeros.

Grid (B * N, Q): the chunk axis is "arbitrary" (sequential) and the fp32 state [H, E] stays in a
VMEM scratch buffer across it. The forward also writes the state entering every chunk; the
backward kernel walks the chunks in reverse from those saved states, carrying dS (the gradient of
the state) in VMEM scratch:

  U   = u_base - w S                     dU  = P^T dO + kd dS
  O   = qg S + P U                       dqg = dO S^T,  dP = dO U^T,  dkd = U dS^T
  S'  = decay S + kd^T U                 dw  = -dU S^T, d decay = sum(dS * S)
                                         dS_prev = decay dS + qg^T dO - w^T dU
All matmuls are `dot_general`s with fp32 accumulation (no transposes in the kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.common import pallas_mode


def _dot(a, b, contract_a: int, contract_b: int, precision):
    return jax.lax.dot_general(
        a,
        b,
        (((contract_a,), (contract_b,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )


def _forward_kernel(*refs, precision, delta: bool):
    # refs: u, [w,] qg, P, kd, decay, S0 | O, states, final | scratch (w only with a delta
    # correction: SSD has none, and a zero w would cost its size in HBM and its gradient)
    if delta:
        u_ref, w_ref, *refs = refs
    else:
        (u_ref, *refs), w_ref = refs, None
    qg_ref, p_ref, kd_ref, decay_ref, s0_ref, o_ref, states_ref, final_ref, state_scratch = refs
    c = pl.program_id(1)

    @pl.when(c == 0)
    def _():
        state_scratch[...] = s0_ref[0]

    S = state_scratch[...]
    states_ref[0, 0] = S
    U = u_ref[0, 0]
    if delta:
        U = U - _dot(w_ref[0, 0], S, 1, 0, precision)
    o_ref[0, 0] = _dot(qg_ref[0, 0], S, 1, 0, precision) + _dot(p_ref[0, 0], U, 1, 0, precision)
    S_next = decay_ref[0, 0] * S + _dot(kd_ref[0, 0], U, 0, 0, precision)
    state_scratch[...] = S_next

    @pl.when(c == pl.num_programs(1) - 1)
    def _():
        final_ref[0] = S_next


def _backward_kernel(*refs, precision, delta: bool):
    # refs: u, [w,] qg, P, kd, decay, states, dO, dfinal | du, [dw,] dqg, dP, dkd, ddecay, dS0 |
    # scratch
    n_in = 9 if delta else 8
    ins, outs, (grad_scratch,) = refs[:n_in], list(refs[n_in:-1]), refs[-1:]
    u_ref, *ins = ins
    w_ref = ins.pop(0) if delta else None
    qg_ref, p_ref, kd_ref, decay_ref, states_ref, do_ref, dfinal_ref = ins
    du_ref = outs.pop(0)
    dw_ref = outs.pop(0) if delta else None
    dqg_ref, dp_ref, dkd_ref, ddecay_ref, ds0_ref = outs
    c = pl.program_id(1)

    @pl.when(c == 0)
    def _():
        grad_scratch[...] = dfinal_ref[0]

    dS = grad_scratch[...]  # gradient of the state leaving this chunk
    S = states_ref[0, 0]
    qg, P, kd, dO = qg_ref[0, 0], p_ref[0, 0], kd_ref[0, 0], do_ref[0, 0]
    U = u_ref[0, 0]
    if delta:
        U = U - _dot(w_ref[0, 0], S, 1, 0, precision)
    dU = _dot(P, dO, 0, 0, precision) + _dot(kd, dS, 1, 0, precision)
    du_ref[0, 0] = dU
    dqg_ref[0, 0] = _dot(dO, S, 1, 1, precision)
    dp_ref[0, 0] = _dot(dO, U, 1, 1, precision)
    dkd_ref[0, 0] = _dot(U, dS, 1, 1, precision)
    ddecay_ref[0, 0] = jnp.sum(dS * S, axis=0, keepdims=True)
    dS_prev = decay_ref[0, 0] * dS + _dot(qg, dO, 0, 0, precision)
    if delta:
        dw_ref[0, 0] = -_dot(dU, S, 1, 1, precision)
        dS_prev = dS_prev - _dot(w_ref[0, 0], dU, 0, 0, precision)
    grad_scratch[...] = dS_prev

    @pl.when(c == pl.num_programs(1) - 1)
    def _():
        ds0_ref[0] = dS_prev


def _chunk_spec(shape, reverse: bool, n_chunks: int):
    if reverse:
        return pl.BlockSpec((1, 1, *shape), lambda b, c: (b, n_chunks - 1 - c, 0, 0))
    return pl.BlockSpec((1, 1, *shape), lambda b, c: (b, c, 0, 0))


def _state_spec(H, E):
    return pl.BlockSpec((1, H, E), lambda b, c: (b, 0, 0))


def _params():
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "arbitrary"),
        vmem_limit_bytes=pallas_mode.current_vmem_limit(),
    )


def _out(shape, like):
    """fp32 output aval that varies over the same shard_map axes as `like`."""
    return jax.ShapeDtypeStruct(shape, jnp.float32, manual_axis_type=jax.typeof(like).mat)


def _forward(u, w, qg, P, kd, decay, S0, precision):
    BN, Q, C, E = u.shape
    H = kd.shape[-1]
    delta = w is not None
    spec = functools.partial(_chunk_spec, reverse=False, n_chunks=Q)
    w_part = [w] if delta else []
    return pl.pallas_call(
        functools.partial(_forward_kernel, precision=precision, delta=delta),
        grid=(BN, Q),
        in_specs=[spec((C, E))]
        + [spec((C, H))] * delta
        + [spec((C, H)), spec((C, C)), spec((C, H)), spec((1, E)), _state_spec(H, E)],
        out_specs=[spec((C, E)), spec((H, E)), _state_spec(H, E)],
        out_shape=[_out((BN, Q, C, E), u), _out((BN, Q, H, E), u), _out((BN, H, E), u)],
        scratch_shapes=[pltpu.VMEM((H, E), jnp.float32)],
        compiler_params=_params(),
        interpret=pallas_mode.interpret(),
    )(u, *w_part, qg, P, kd, decay, S0)


def backward(u, w, qg, P, kd, decay, states, dO, dfinal, precision):
    """The reverse kernel on flat [B * N, Q, ...] arrays (the VJP of `scan_flat`): the gradients
    of u, w (None where w is), qg, P, kd, decay and the initial state, from the states entering
    every chunk."""
    BN, Q, C, E = u.shape
    H = kd.shape[-1]
    delta = w is not None
    spec = functools.partial(_chunk_spec, reverse=True, n_chunks=Q)
    shapes = [(C, E)] + [(C, H)] * delta + [(C, H), (C, C), (C, H), (1, E)]
    grads = pl.pallas_call(
        functools.partial(_backward_kernel, precision=precision, delta=delta),
        grid=(BN, Q),
        in_specs=[spec(s) for s in shapes] + [spec((H, E)), spec((C, E)), _state_spec(H, E)],
        out_specs=[spec(s) for s in shapes] + [_state_spec(H, E)],
        out_shape=[_out((BN, Q, *s), u) for s in shapes] + [_out((BN, H, E), u)],
        scratch_shapes=[pltpu.VMEM((H, E), jnp.float32)],
        compiler_params=_params(),
        interpret=pallas_mode.interpret(),
    )(u, *([w] if delta else []), qg, P, kd, decay, states, dO, dfinal)
    return grads if delta else [grads[0], None, *grads[1:]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def scan_flat(u, w, qg, P, kd, decay, S0, precision):
    """The scan on flat fp32 arrays: u [B * N, Q, C, E], w (None: no delta correction), qg, kd
    [B * N, Q, C, H], P [B * N, Q, C, C], decay [B * N, Q, 1, E] (e^G_last broadcast over E), S0
    [B * N, H, E] -> (O, final S)."""
    O, _, final = _forward(u, w, qg, P, kd, decay, S0, precision)
    return O, final


def _scan_flat_fwd(u, w, qg, P, kd, decay, S0, precision):
    O, states, final = _forward(u, w, qg, P, kd, decay, S0, precision)
    return (O, final), (u, w, qg, P, kd, decay, states)


def _scan_flat_bwd(precision, residuals, cotangents):
    dO, dfinal = cotangents
    return tuple(backward(*residuals, dO, dfinal, precision))


scan_flat.defvjp(_scan_flat_fwd, _scan_flat_bwd)


def inter_chunk_scan(u_base, w, qg, P, kd, decay, initial_state, precision):
    """Scan the state across chunks: u_base [B, N, Q, C, E]; w (None: no delta correction, SSD),
    qg, kd [B, N, Q, C, H]; P [B, N, Q, C, C]; decay [B, N, Q] (e^G_last); initial_state
    [B, N, H, E] fp32. Returns (O [B, N, Q, C, E], final S [B, N, H, E])."""
    B, N, Q, C, E = u_base.shape
    H = kd.shape[-1]

    def flat(x):
        return None if x is None else x.reshape(B * N, *x.shape[2:]).astype(jnp.float32)

    decay_rows = jnp.broadcast_to(decay[..., None, None], (B, N, Q, 1, E))
    O, final = scan_flat(
        *(flat(x) for x in (u_base, w, qg, P, kd, decay_rows, initial_state)), precision
    )
    return O.reshape(B, N, Q, C, E), final.reshape(B, N, H, E)
