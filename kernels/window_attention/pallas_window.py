"""Sink + window causal attention as Pallas TPU kernels with W and S as scalar-prefetch operands
(forward and backward; interpret mode off TPU).

Query t sees key s iff s <= t and (t - s < W or s < S). W and S arrive as int32 [B] operands of
`pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2)`: they sit in SMEM before the grid starts,
so the index maps and the kernels read them, and new values (traced, or different per row) never
recompile. Row b uses its own (W[b], S[b]).

Layout: the wrapper pads T to a multiple of the blocks (padded keys come after every real query,
so the causal mask hides them; the output is cropped) and moves heads before time: q [B, N, T, H],
k [B, K, T, H], v [B, K, T, E]. Grouped-query attention reads kv head n // (N / K) through the
index maps; k and v are never repeated.

  forward  grid (B, N, query blocks, key blocks), key axis "arbitrary": online softmax with the
           running max and denominator in fp32 VMEM scratch [block_q, 128] (lane-replicated) and
           the output in fp32 scratch [block_q, E]. Writes O and the logsumexp per query
           (fp32 [B, N, 1, T], row layout) for the backward.
  dq       grid (B, N, query blocks, key blocks): P recomputed from the logsumexp,
           dS = P * (dO V^T - D) with D = rowsum(dO * O), dq = scale * dS K, in fp32 scratch.
  dk, dv   grid (B, K, key blocks, G, query blocks), the last two "arbitrary": the G query heads of
           a group and all query blocks fold into one fp32 scratch per key block, so dk and dv come
           out per kv head (no [.., N, ..] gradient, no XLA sum).

Block skipping: a (query block, key block) pair is computed only when it can hold a visible key:
the key block starts at or before the query block's last query, and either reaches the window of
the query block's first query or starts inside the sinks (decided per row from the prefetched W
and S, with `pl.when`). The index maps also clamp a skipped step's block index onto the nearest
block the kernel does use (steps short of the band load the first band block, steps past the
diagonal the diagonal block; for dk/dv the first or last query block that sees the key block), so
skipped steps DMA nothing new:
the pipeline re-uses the block already in VMEM. Skipped steps still cost a grid step each (the grid
is static, W is not): about T^2 / (block_q block_k) steps per head, which at long T and small
windows favours larger blocks.

Numerics: matmuls take the input dtype with fp32 accumulation (fp32 inputs at HIGHEST precision);
P and dS are cast to v's and k's dtype before their matmuls, as in flash attention. W < 1 with no
sink in reach leaves a query with no visible key: its output and gradients are 0.
Blocks are multiples of 8; on TPU block_q must also be a multiple of 128 or cover the whole padded
sequence (the logsumexp row block is [1, block_q]); block_k has no such bound (64, 16 and 8 lower).
Under shard_map in interpret mode (CPU) Pallas' interpreter does not track varying manual axes: use
check_vma=False there, as the model does; compiled for TPU, check_vma=True works.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.common import pallas_mode
from kernels.common.masking import MASKED
from kernels.common.varying import vary_like
from kernels.window_attention.naive import per_row
from kernels.window_attention.pallas_window_backward import backward
from kernels.window_attention.pallas_window_common import (
    LANES,
    SUBLANES,
    dot,
    mask,
    needed,
    out,
    params,
    query_grid_maps,
)

# -- kernels --


def _forward_kernel(w_ref, s_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, m_scratch, l_scratch,
                    acc_scratch, *, scale, bq, bk):  # fmt: skip
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    W, S = w_ref[b], s_ref[b]

    @pl.when(j == 0)
    def _():
        m_scratch[...] = jnp.full(m_scratch.shape, MASKED, jnp.float32)
        l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
        acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    @pl.when(needed(i, j, W, S, bq, bk))
    def _():
        v = v_ref[...]
        seen = mask(i, j, W, S, bq, bk)
        s = jnp.where(seen, dot(q_ref[...], k_ref[...], 1, 1) * scale, MASKED)
        m_prev = m_scratch[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        p = jnp.where(seen, jnp.exp(s - m_next[:, :1]), 0.0)
        correction = jnp.exp(m_prev - m_next)
        l_scratch[...] = correction * l_scratch[...] + jnp.sum(p, axis=1, keepdims=True)
        m_scratch[...] = m_next
        pv = dot(p.astype(v.dtype), v, 1, 0)
        acc_scratch[...] = acc_scratch[...] * correction[:, :1] + pv

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        denom = l_scratch[...]
        safe = jnp.where(denom == 0.0, 1.0, denom)  # a query with no visible key gives 0
        o_ref[...] = (acc_scratch[...] / safe[:, :1]).astype(o_ref.dtype)
        lse = m_scratch[...] + jnp.log(safe)  # [bq, 128], equal lanes
        lse_ref[...] = jnp.transpose(lse)[:1, :]  # the row [1, bq]


# -- pallas_calls on the padded, heads-first layout --


def _forward(q, k, v, window_B, sinks_B, scale, bq, bk):
    """q [B, N, T, H], k [B, K, T, H], v [B, K, T, E] (T a multiple of both blocks) ->
    (O [B, N, T, E] in q's dtype, logsumexp fp32 [B, N, 1, T])."""
    B, N, T, H = q.shape
    K, E = k.shape[1], v.shape[-1]
    q_map, kv_map, lse_map = query_grid_maps(N // K, bq, bk)
    kernel = functools.partial(_forward_kernel, scale=scale, bq=bq, bk=bk)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, N, T // bq, T // bk),
            in_specs=[
                pl.BlockSpec((None, None, bq, H), q_map),
                pl.BlockSpec((None, None, bk, H), kv_map),
                pl.BlockSpec((None, None, bk, E), kv_map),
            ],
            out_specs=[
                pl.BlockSpec((None, None, bq, E), q_map),
                pl.BlockSpec((None, None, 1, bq), lse_map),
            ],
            scratch_shapes=[
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, LANES), jnp.float32),
                pltpu.VMEM((bq, E), jnp.float32),
            ],
        ),
        out_shape=[out((B, N, T, E), q.dtype, q), out((B, N, 1, T), jnp.float32, q)],
        compiler_params=params(3, 1),
        interpret=pallas_mode.interpret(),
    )(window_B, sinks_B, q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, window_B, sinks_B, scale, bq, bk):
    return _forward(q, k, v, window_B, sinks_B, scale, bq, bk)[0]


def _attention_fwd(q, k, v, window_B, sinks_B, scale, bq, bk):
    o, lse = _forward(q, k, v, window_B, sinks_B, scale, bq, bk)
    return o, (q, k, v, window_B, sinks_B, o, lse)


def _attention_bwd(scale, bq, bk, residuals, do):
    q, k, v, window_B, sinks_B, o, lse = residuals
    dq, dk, dv = backward(q, k, v, window_B, sinks_B, o, lse, do, scale, bq, bk)
    return dq, dk, dv, None, None  # W and S are integers: no gradient


_attention.defvjp(_attention_fwd, _attention_bwd)


# -- the public wrapper: [B, T, heads, d] in and out --


def blocks_for(T: int, block_q: int, block_k: int) -> tuple[int, int, int]:
    """(block_q, block_k, padded T): blocks are multiples of 8, and a sequence no longer than both
    blocks takes one block of T rounded up to 8; T is padded to a multiple of both blocks. Compiled
    for TPU, block_q must be a multiple of 128 or cover the padded sequence (the logsumexp row)."""
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block < SUBLANES or block % SUBLANES:
            raise ValueError(f"{name} must be a positive multiple of {SUBLANES}, got {block}")
    short = -(-T // SUBLANES) * SUBLANES
    if short <= min(block_q, block_k):
        return short, short, short
    step = math.lcm(block_q, block_k)
    padded = -(-T // step) * step
    if not pallas_mode.interpret() and block_q % LANES and block_q != padded:
        raise ValueError(
            f"block_q={block_q}: on TPU the query block must be a multiple of {LANES} (or cover "
            f"the padded sequence, {padded})"
        )
    return block_q, block_k, padded


def _prepare(q, k, v, window, sinks, block_q, block_k):
    B, T, N, _ = q.shape
    if k.ndim != 4 or k.shape[:2] != (B, T) or v.shape[:3] != k.shape[:3] or N % k.shape[2]:
        raise ValueError(
            f"k, v must be [B, T, K, H] with K dividing q's {N} heads; got {k.shape}, {v.shape}"
        )
    bq, bk, padded = blocks_for(T, block_q, block_k)
    # W beyond the padded length sees everything causal, W < 0 nothing past the sinks: clamping
    # keeps the block arithmetic inside int32 without changing the mask
    window_B = jnp.clip(per_row(T if window is None else window, B), 0, padded)
    sinks_B = jnp.clip(per_row(sinks, B, "sinks"), 0, padded)
    window_B, sinks_B = (vary_like(x, (q, k, v)) for x in (window_B, sinks_B))

    def heads_first(x):  # padded keys come after every real query: the causal mask hides them
        return jnp.moveaxis(jnp.pad(x, ((0, 0), (0, padded - T), (0, 0), (0, 0))), 2, 1)

    return (heads_first(q), heads_first(k), heads_first(v), window_B, sinks_B), (bq, bk)


def attention(q, k, v, window, sinks, scale, *, block_q: int = 128, block_k: int = 128):
    """q [B, T, N, H], k [B, T, K, H], v [B, T, K, E] (K divides N) -> [B, T, N, E] in q's dtype.

    `window` and `sinks`: Python ints, traced 0-d, or int32 [B] (row b its own pair); window=None
    is plain causal. Differentiable in q, k, v (Pallas dq and dk/dv kernels); one compile for
    every W and S."""
    T = q.shape[1]
    args, (bq, bk) = _prepare(q, k, v, window, sinks, block_q, block_k)
    return jnp.moveaxis(_attention(*args, float(scale), bq, bk), 1, 2)[:, :T]


def forward(q, k, v, window, sinks, scale, *, block_q: int = 128, block_k: int = 128):
    """The forward kernel alone (not differentiable): (O [B, T, N, E], logsumexp fp32 [B, T, N]),
    the logsumexp of each query's scaled visible scores, which the backward recomputes P from."""
    T = q.shape[1]
    args, (bq, bk) = _prepare(q, k, v, window, sinks, block_q, block_k)
    o, lse = _forward(*args, float(scale), bq, bk)
    return jnp.moveaxis(o, 1, 2)[:, :T], jnp.moveaxis(lse[:, :, 0], 1, 2)[:, :T]
