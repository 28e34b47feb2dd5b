"""The inter-chunk state scan of the chunked recurrences as Pallas TPU kernels, with a custom VJP.

Same contract as `chunking.inter_chunk_scan`. Grid (batch*heads, chunks); the chunk axis is
"arbitrary" (sequential) and the fp32 state [K, V] stays in a VMEM scratch buffer across it. The
forward also writes the state entering every chunk; the backward kernel walks the chunks in
reverse from those saved states, carrying dS (the gradient of the state) in VMEM scratch:

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

from kernels import pallas_mode


def _dot(a, b, contract_a: int, contract_b: int, precision):
    return jax.lax.dot_general(
        a,
        b,
        (((contract_a,), (contract_b,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )


def _forward_kernel(u_ref, w_ref, qg_ref, p_ref, kd_ref, decay_ref, s0_ref,
                    o_ref, states_ref, final_ref, state_scratch, *, precision):  # fmt: skip
    c = pl.program_id(1)

    @pl.when(c == 0)
    def _():
        state_scratch[...] = s0_ref[0]

    S = state_scratch[...]
    states_ref[0, 0] = S
    U = u_ref[0, 0] - _dot(w_ref[0, 0], S, 1, 0, precision)
    o_ref[0, 0] = _dot(qg_ref[0, 0], S, 1, 0, precision) + _dot(p_ref[0, 0], U, 1, 0, precision)
    S_next = decay_ref[0, 0] * S + _dot(kd_ref[0, 0], U, 0, 0, precision)
    state_scratch[...] = S_next

    @pl.when(c == pl.num_programs(1) - 1)
    def _():
        final_ref[0] = S_next


def _backward_kernel(u_ref, w_ref, qg_ref, p_ref, kd_ref, decay_ref, states_ref, do_ref,
                     dfinal_ref, du_ref, dw_ref, dqg_ref, dp_ref, dkd_ref, ddecay_ref, ds0_ref,
                     grad_scratch, *, precision):  # fmt: skip
    c = pl.program_id(1)

    @pl.when(c == 0)
    def _():
        grad_scratch[...] = dfinal_ref[0]

    dS = grad_scratch[...]  # gradient of the state leaving this chunk
    S = states_ref[0, 0]
    w, qg, P, kd, dO = w_ref[0, 0], qg_ref[0, 0], p_ref[0, 0], kd_ref[0, 0], do_ref[0, 0]
    U = u_ref[0, 0] - _dot(w, S, 1, 0, precision)
    dU = _dot(P, dO, 0, 0, precision) + _dot(kd, dS, 1, 0, precision)
    du_ref[0, 0] = dU
    dw_ref[0, 0] = -_dot(dU, S, 1, 1, precision)
    dqg_ref[0, 0] = _dot(dO, S, 1, 1, precision)
    dp_ref[0, 0] = _dot(dO, U, 1, 1, precision)
    dkd_ref[0, 0] = _dot(U, dS, 1, 1, precision)
    ddecay_ref[0, 0] = jnp.sum(dS * S, axis=0, keepdims=True)
    dS_prev = decay_ref[0, 0] * dS + _dot(qg, dO, 0, 0, precision) - _dot(w, dU, 0, 0, precision)
    grad_scratch[...] = dS_prev

    @pl.when(c == pl.num_programs(1) - 1)
    def _():
        ds0_ref[0] = dS_prev


def _chunk_spec(shape, reverse: bool, n_chunks: int):
    if reverse:
        return pl.BlockSpec((1, 1, *shape), lambda b, c: (b, n_chunks - 1 - c, 0, 0))
    return pl.BlockSpec((1, 1, *shape), lambda b, c: (b, c, 0, 0))


def _state_spec(K, V):
    return pl.BlockSpec((1, K, V), lambda b, c: (b, 0, 0))


def _params():
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "arbitrary"),
        vmem_limit_bytes=pallas_mode.current_vmem_limit(),
    )


def _out(shape, like):
    """fp32 output aval that varies over the same shard_map axes as `like`."""
    return jax.ShapeDtypeStruct(shape, jnp.float32, manual_axis_type=jax.typeof(like).mat)


def _forward(u, w, qg, P, kd, decay, S0, precision):
    BH, N, C, V = u.shape
    K = w.shape[-1]
    spec = functools.partial(_chunk_spec, reverse=False, n_chunks=N)
    return pl.pallas_call(
        functools.partial(_forward_kernel, precision=precision),
        grid=(BH, N),
        in_specs=[
            spec((C, V)),
            spec((C, K)),
            spec((C, K)),
            spec((C, C)),
            spec((C, K)),
            spec((1, V)),
            _state_spec(K, V),
        ],
        out_specs=[spec((C, V)), spec((K, V)), _state_spec(K, V)],
        out_shape=[_out((BH, N, C, V), u), _out((BH, N, K, V), u), _out((BH, K, V), u)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        compiler_params=_params(),
        interpret=pallas_mode.interpret(),
    )(u, w, qg, P, kd, decay, S0)


def _backward(u, w, qg, P, kd, decay, states, dO, dfinal, precision):
    BH, N, C, V = u.shape
    K = w.shape[-1]
    spec = functools.partial(_chunk_spec, reverse=True, n_chunks=N)
    shapes = [(C, V), (C, K), (C, K), (C, C), (C, K), (1, V)]
    return pl.pallas_call(
        functools.partial(_backward_kernel, precision=precision),
        grid=(BH, N),
        in_specs=[spec(s) for s in shapes] + [spec((K, V)), spec((C, V)), _state_spec(K, V)],
        out_specs=[spec(s) for s in shapes] + [_state_spec(K, V)],
        out_shape=[_out((BH, N, *s), u) for s in shapes] + [_out((BH, K, V), u)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        compiler_params=_params(),
        interpret=pallas_mode.interpret(),
    )(u, w, qg, P, kd, decay, states, dO, dfinal)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _scan_flat(u, w, qg, P, kd, decay, S0, precision):
    O, _, final = _forward(u, w, qg, P, kd, decay, S0, precision)
    return O, final


def _scan_flat_fwd(u, w, qg, P, kd, decay, S0, precision):
    O, states, final = _forward(u, w, qg, P, kd, decay, S0, precision)
    return (O, final), (u, w, qg, P, kd, decay, states)


def _scan_flat_bwd(precision, residuals, cotangents):
    dO, dfinal = cotangents
    return tuple(_backward(*residuals, dO, dfinal, precision))


_scan_flat.defvjp(_scan_flat_fwd, _scan_flat_bwd)


def inter_chunk_scan(u_base, w, qg, P, kd, decay, initial_state, precision):
    """Drop-in for `chunking.inter_chunk_scan` (w may be None): returns (O, final S)."""
    B, H, N, C, V = u_base.shape
    K = kd.shape[-1]
    if w is None:  # no delta correction (SSD): the kernel multiplies zeros
        w = jnp.zeros(kd.shape, jnp.float32)

    def flat(x):
        return x.reshape(B * H, *x.shape[2:]).astype(jnp.float32)

    decay_rows = jnp.broadcast_to(decay[..., None, None], (B, H, N, 1, V))
    O, final = _scan_flat(
        *(flat(x) for x in (u_base, w, qg, P, kd, decay_rows, initial_state)), precision
    )
    return O.reshape(B, H, N, C, V), final.reshape(B, H, K, V)
