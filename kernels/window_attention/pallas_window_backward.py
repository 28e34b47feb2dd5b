"""The backward of the Pallas sink-window attention (kernels/window_attention/pallas_window.py):
P recomputed from the forward's logsumexp, D = rowsum(dO * O).

  dq       grid (B, N, query blocks, key blocks): dS = P * (dO V^T - D), dq = scale * dS K.
  dk, dv   grid (B, K, key blocks, G, query blocks), the last two "arbitrary": the G query heads of
           a group and all query blocks fold into one fp32 scratch per key block.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.common import pallas_mode
from kernels.window_attention.pallas_window_common import (
    dot,
    mask,
    needed,
    out,
    params,
    query_block,
    query_grid_maps,
)


def _dq_kernel(w_ref, s_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, dq_ref, dq_scratch,
               *, scale, bq, bk):  # fmt: skip
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    W, S = w_ref[b], s_ref[b]

    @pl.when(j == 0)
    def _():
        dq_scratch[...] = jnp.zeros(dq_scratch.shape, jnp.float32)

    @pl.when(needed(i, j, W, S, bq, bk))
    def _():
        k = k_ref[...]
        seen = mask(i, j, W, S, bq, bk)
        s = dot(q_ref[...], k, 1, 1) * scale
        lse = jnp.expand_dims(lse_ref[0], -1)  # [bq, 1]
        p = jnp.where(seen, jnp.exp(s - lse), 0.0)
        dp = dot(do_ref[...], v_ref[...], 1, 1)
        ds = p * (dp - jnp.expand_dims(di_ref[0], -1))
        dq_scratch[...] += dot(ds.astype(k.dtype), k, 1, 0)

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        dq_ref[...] = (dq_scratch[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(w_ref, s_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, dk_ref, dv_ref,
                dk_scratch, dv_scratch, *, scale, bq, bk):  # fmt: skip
    b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    W, S = w_ref[b], s_ref[b]

    @pl.when((g == 0) & (i == 0))
    def _():
        dk_scratch[...] = jnp.zeros(dk_scratch.shape, jnp.float32)
        dv_scratch[...] = jnp.zeros(dv_scratch.shape, jnp.float32)

    @pl.when(needed(i, j, W, S, bq, bk))
    def _():
        q, do = q_ref[...], do_ref[...]
        seen = mask(i, j, W, S, bq, bk, keys_first=True)  # [bk, bq]
        s = dot(k_ref[...], q, 1, 1) * scale
        p = jnp.where(seen, jnp.exp(s - lse_ref[...]), 0.0)  # the logsumexp row [1, bq]
        dv_scratch[...] += dot(p.astype(do.dtype), do, 1, 0)
        dp = dot(v_ref[...], do, 1, 1)
        ds = p * (dp - di_ref[...])
        dk_scratch[...] += dot(ds.astype(q.dtype), q, 1, 0)

    @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
    def _():
        dk_ref[...] = (dk_scratch[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scratch[...].astype(dv_ref.dtype)


def backward(q, k, v, window_B, sinks_B, o, lse, do, scale, bq, bk):
    """dq [B, N, T, H], dk [B, K, T, H], dv [B, K, T, E] (in q's, k's, v's dtype)."""
    # D = rowsum(dO * O), the softmax's correction term, as a row per query like the logsumexp
    di = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)[:, :, None, :]
    args = (window_B, sinks_B, q, k, v, do, lse, di)
    return (_dq(*args, scale=scale, bq=bq, bk=bk), *_dkv(*args, scale=scale, bq=bq, bk=bk))


def _dq(window_B, sinks_B, q, k, v, do, lse, di, *, scale, bq, bk):
    """Grid over query blocks, key blocks "arbitrary"."""
    B, N, T, H = q.shape
    K, E = k.shape[1], v.shape[-1]
    q_map, kv_map, row_map = query_grid_maps(N // K, bq, bk)
    return pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bq=bq, bk=bk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, N, T // bq, T // bk),
            in_specs=[
                pl.BlockSpec((None, None, bq, H), q_map),
                pl.BlockSpec((None, None, bk, H), kv_map),
                pl.BlockSpec((None, None, bk, E), kv_map),
                pl.BlockSpec((None, None, bq, E), q_map),
                pl.BlockSpec((None, None, 1, bq), row_map),
                pl.BlockSpec((None, None, 1, bq), row_map),
            ],
            out_specs=pl.BlockSpec((None, None, bq, H), q_map),
            scratch_shapes=[pltpu.VMEM((bq, H), jnp.float32)],
        ),
        out_shape=out(q.shape, q.dtype, q),
        compiler_params=params(3, 1),
        interpret=pallas_mode.interpret(),
    )(window_B, sinks_B, q, k, v, do, lse, di)


def _dkv(window_B, sinks_B, q, k, v, do, lse, di, *, scale, bq, bk):
    """Grid over key blocks; the group's query heads and the query blocks "arbitrary"."""
    B, N, T, H = q.shape
    K, E = k.shape[1], v.shape[-1]
    G, nq, nk = N // K, T // bq, T // bk

    def q_side(b, h, j, g, i, w_ref, s_ref):
        return b, h * G + g, query_block(i, j, w_ref[b], s_ref[b], bq, bk, nq), 0

    def q_row(b, h, j, g, i, w_ref, s_ref):
        return b, h * G + g, 0, query_block(i, j, w_ref[b], s_ref[b], bq, bk, nq)

    def kv_side(b, h, j, g, i, w_ref, s_ref):
        return b, h, j, 0

    return pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=bq, bk=bk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, K, nk, G, nq),
            in_specs=[
                pl.BlockSpec((None, None, bq, H), q_side),
                pl.BlockSpec((None, None, bk, H), kv_side),
                pl.BlockSpec((None, None, bk, E), kv_side),
                pl.BlockSpec((None, None, bq, E), q_side),
                pl.BlockSpec((None, None, 1, bq), q_row),
                pl.BlockSpec((None, None, 1, bq), q_row),
            ],
            out_specs=[
                pl.BlockSpec((None, None, bk, H), kv_side),
                pl.BlockSpec((None, None, bk, E), kv_side),
            ],
            scratch_shapes=[pltpu.VMEM((bk, H), jnp.float32), pltpu.VMEM((bk, E), jnp.float32)],
        ),
        out_shape=[out(k.shape, k.dtype, k), out(v.shape, v.dtype, v)],
        compiler_params=params(3, 2),
        interpret=pallas_mode.interpret(),
    )(window_B, sinks_B, q, k, v, do, lse, di)
