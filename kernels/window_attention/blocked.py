"""Blocked sink + window causal attention in XLA: compute follows what is visible, W and S traced.

Queries and keys go in blocks of `block` tokens. For each query block, a scan over key blocks
skips (`lax.cond`) every block that holds no visible key (above the diagonal, or outside both the
sink prefix and the query block's window band) and folds the rest in with an online softmax, so the
[T, T] score matrix is never formed: T^2 / 2 work causal, T (W + S) windowed, one compile for every
W and S; differentiable, with memory growing with T in the backward pass (both scans
rematerialised). W and S may differ per row ([B]): the batch runs one program, so a key block is
skipped only when no row sees it, which the largest W and the largest S decide (the rows that do
not see it are masked inside it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common.masking import MASKED
from kernels.common.varying import vary_like
from kernels.window_attention.naive import per_row, row_mask


def blocked(q_BTNH, k_BTKH, v_BTKE, window, sinks, scale: float, block: int):
    """q [B, T, N, H], k [B, T, K, H], v [B, T, K, E] -> [B, T, N, E] in q's dtype; `window` and
    `sinks` are scalars or int32 [B]."""
    B, T, N, H = q_BTNH.shape
    window_B, sinks_B = per_row(window, B), per_row(sinks, B, "sinks")
    # the widest row decides which key blocks run: one reduction over the batch per call
    bounds = (window_B, sinks_B, jnp.max(window_B), jnp.max(sinks_B))
    K, E = k_BTKH.shape[2], v_BTKE.shape[-1]
    n_blocks = -(-T // block)
    pad = n_blocks * block - T  # padded keys sit after every real query: the causal mask hides them

    def to_blocks(x):  # [B, T, heads, d] -> [n, B, heads, block, d]
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return x.reshape(B, n_blocks, block, x.shape[2], x.shape[3]).transpose(1, 0, 3, 2, 4)

    q_blocks = to_blocks(q_BTNH).reshape(n_blocks, B, K, N // K, block, H)
    k_blocks, v_blocks = to_blocks(k_BTKH), to_blocks(v_BTKE)

    def query_block(_, inputs):
        i, q_BKGCH = inputs
        out = _query_block(i, q_BKGCH, k_blocks, v_blocks, block, scale, bounds)
        return None, out.astype(q_BKGCH.dtype)

    # rematerialised per query block: the backward pass holds one query block's key-block carries
    # at a time, so training memory grows with T, not T^2 (a 3B model at 24k tokens)
    _, out = jax.lax.scan(jax.checkpoint(query_block), None, (jnp.arange(n_blocks), q_blocks))
    # [n, B, K, G, block, E] -> [B, T, N, E]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, n_blocks * block, N, E)
    return out[:, :T]


def _query_block(i, q_BKGCH, k_blocks, v_blocks, block, scale, bounds):
    """Query block i against every key block, by online softmax: [B, K, G, block, E] fp32."""
    window_B, sinks_B, window_max, sinks_max = bounds
    n_blocks = k_blocks.shape[0]
    within = jnp.arange(block)
    q_pos = i * block + within

    def key_block(carry, key_inputs):
        j, k_BKCH, v_BKCE = key_inputs
        # the block's last key reaches the window of the block's first query, or is a sink
        reaches = ((j + 1) * block - 1 > i * block - window_max) | (j * block < sinks_max)
        needed = (j <= i) & reaches

        def update(carry):
            seen = row_mask(window_B, sinks_B, q_pos, j * block + within)[:, None, None]
            return _online_softmax_step(carry, q_BKGCH, k_BKCH, v_BKCE, seen, scale)

        # rematerialised: the gradient keeps the small running carry per key block, not its
        # [block, block] scores and probabilities
        return jax.lax.cond(needed, jax.checkpoint(update), lambda c: c, carry), None

    shape = q_BKGCH.shape[:-1]
    init = (
        jnp.full(shape, MASKED, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros((*shape, v_blocks.shape[-1]), jnp.float32),
    )
    # under shard_map the skipped-block branch must return the carry's type: varying like q, k, v
    init = tuple(vary_like(x, (q_BKGCH, k_blocks, v_blocks)) for x in init)
    (_, denom, acc), _ = jax.lax.scan(key_block, init, (jnp.arange(n_blocks), k_blocks, v_blocks))
    return acc / denom[..., None]


def _online_softmax_step(carry, q_BKGCH, k_BKCH, v_BKCE, seen, scale):
    """Fold one key block into the running (row max, denominator, weighted sum of values)."""
    row_max, denom, acc = carry
    s = jnp.einsum("BKGTH,BKUH->BKGTU", q_BKGCH, k_BKCH, preferred_element_type=jnp.float32)
    s = jnp.where(seen, s * scale, MASKED)
    new_max = jnp.maximum(row_max, s.max(-1))
    p = jnp.exp(s - new_max[..., None])
    correction = jnp.exp(row_max - new_max)
    pv = jnp.einsum(
        "BKGTU,BKUE->BKGTE", p.astype(v_BKCE.dtype), v_BKCE, preferred_element_type=jnp.float32
    )
    return new_max, denom * correction + p.sum(-1), acc * correction[..., None] + pv
