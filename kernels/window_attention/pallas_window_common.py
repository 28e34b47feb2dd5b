"""What the Pallas sink-window kernels share (kernels/window_attention/pallas_window.py): which
block pairs hold a visible key, the index-map clamps that keep skipped steps from copying, the
in-block mask, the fp32-accumulating product and the pallas_call settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from kernels.common import pallas_mode
from kernels.window_attention.naive import visible

LANES = 128  # the running max and denominator are kept lane-replicated, [block_q, 128]
SUBLANES = 8


# -- which blocks hold a visible key (shared by the index maps and the kernels) --


def needed(i, j, W, S, bq: int, bk: int):
    """Whether query block i and key block j share a visible (query, key) pair: the key block
    starts at or before the last query, and its last key is inside the window of the first query
    (for W >= 1, overlapping blocks always qualify) or its first key is a sink."""
    causal = j * bk <= (i + 1) * bq - 1
    band = i * bq - (j + 1) * bk + 1 < W
    return causal & (band | (j * bk < S))


def key_block(i, j, W, S, bq: int, bk: int):
    """Key block to load at step (i, j): j itself when needed, otherwise the nearest block the query
    block uses next or last (the first band block, or the diagonal block), so no new DMA."""
    first_band = lax.div(jnp.maximum(i * bq - W + 1, 0), bk)
    diagonal = lax.div((i + 1) * bq - 1, bk)
    return jnp.where(needed(i, j, W, S, bq, bk), j, jnp.clip(j, first_band, diagonal))


def query_block(i, j, W, S, bq: int, bk: int, nq: int):
    """Query block to load at step (j, i) of the dk/dv grid: i when needed, otherwise the first or
    last query block that sees key block j."""
    first = lax.div(j * bk, bq)
    last = jnp.minimum(lax.div(W + (j + 1) * bk - 2, bq), nq - 1)
    return jnp.where(needed(i, j, W, S, bq, bk), i, jnp.clip(i, first, jnp.maximum(first, last)))


def mask(i, j, W, S, bq: int, bk: int, keys_first: bool = False):
    """visible() over the block pair: [bq, bk], or [bk, bq] with keys_first."""
    shape = (bk, bq) if keys_first else (bq, bk)
    q_axis, k_axis = (1, 0) if keys_first else (0, 1)
    q_pos = i * bq + lax.broadcasted_iota(jnp.int32, shape, q_axis)
    k_pos = j * bk + lax.broadcasted_iota(jnp.int32, shape, k_axis)
    return visible(q_pos, k_pos, W, S)


def dot(a, b, contract_a: int, contract_b: int):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(
        a, b, (((contract_a,), (contract_b,)), ((), ())),
        precision=precision, preferred_element_type=jnp.float32,
    )  # fmt: skip


def out(shape, dtype, like):
    """Output aval that varies over the same shard_map axes as `like`."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)


def params(parallel: int, arbitrary: int):
    return pltpu.CompilerParams(
        dimension_semantics=("parallel",) * parallel + ("arbitrary",) * arbitrary,
        vmem_limit_bytes=pallas_mode.current_vmem_limit(),
    )


def query_grid_maps(G: int, bq: int, bk: int):
    """Index maps of a grid (b, n, query block i, key block j), the forward's and dq's: the
    query-side blocks, the kv blocks (head n // G, clamped by `key_block`), the per-query rows."""

    def q_map(b, n, i, j, w_ref, s_ref):
        return b, n, i, 0

    def kv_map(b, n, i, j, w_ref, s_ref):
        return b, n // G, key_block(i, j, w_ref[b], s_ref[b], bq, bk), 0

    def row_map(b, n, i, j, w_ref, s_ref):
        return b, n, 0, i

    return q_map, kv_map, row_map
