"""Attention of a block of new queries over a decode cache in blocks of slots, skipping the blocks
no query sees: prefill's attention for caches longer than one block.

`naive.masked_attention` scores every slot of the cache at once. A full-attention cache is sized
for the whole context, and a ring of S + W slots fills until the prompt reaches S + W, so while a
prompt is prefilled chunk by chunk many slots are still empty: chunk i of n sees i of a full
cache's n blocks, and scoring all of them does about twice the work of the filled ones. Here the
cache goes in blocks of `block` slots, folded in with an online softmax; a block no query sees
(empty, or hidden by the mask) is skipped with `lax.cond`, and each block's scores stay small even
when none is. The new tokens' own keys come last. Same inputs and outputs as `masked_attention`
with the cache ([B, K, H, C], slots last) and the new tokens ([B, P, K, H]) as its two key blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common.masking import MASKED
from kernels.window_attention.blocked import online_softmax_step


def skipping_attention(q, cache_k, cache_v, new_k, new_v, mask, *, block: int, scale=None):
    """q [B, P, N, H]; cache_k [B, K, H, C] (slots last), cache_v [B, C, K, E]; new_k [B, P, K, H],
    new_v [B, P, K, E]; mask [B, P, C + P] or [P, C + P] (which key each query sees, the cache's
    slots first; every query must see at least one key). Returns [B, P, N, E] in v's dtype."""
    B, P, N, H = q.shape
    K, C, E = cache_v.shape[2], cache_v.shape[1], cache_v.shape[-1]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    mask = mask if mask.ndim == 3 else mask[None]
    # [B, K, G*P, H]: the rows of each K/V head's plain matmuls
    q_rows = q.reshape(B, P, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * P, H)

    def fold(carry, keys_BKHU, values_BKUE, seen):
        """The running (row max, denominator, weighted values) with one key block folded in."""
        s = jnp.matmul(q_rows, keys_BKHU, preferred_element_type=jnp.float32)
        s = jnp.where(seen[:, None, None], s.reshape(B, K, G, P, -1) * scale, MASKED)
        return online_softmax_step(carry, s, values_BKUE)

    def cache_block(carry, start, size):
        seen = jax.lax.dynamic_slice_in_dim(mask, start, size, axis=2)

        def update(carry):
            keys = jax.lax.dynamic_slice_in_dim(cache_k, start, size, axis=3)
            values = jax.lax.dynamic_slice_in_dim(cache_v, start, size, axis=1)
            return fold(carry, keys, values.transpose(0, 2, 1, 3), seen)

        return jax.lax.cond(jnp.any(seen), update, lambda c: c, carry)

    init = (
        jnp.full((B, K, G, P), MASKED, jnp.float32),
        jnp.zeros((B, K, G, P), jnp.float32),
        jnp.zeros((B, K, G, P, E), jnp.float32),
    )
    whole, carry = C // block, init
    if whole:
        carry, _ = jax.lax.scan(
            lambda c, j: (cache_block(c, j * block, block), None), carry, jnp.arange(whole)
        )
    if C % block:  # the cache's last, shorter block
        carry = cache_block(carry, whole * block, C % block)
    # the new tokens' keys: every query sees at least itself among them
    row_max, denom, acc = fold(
        carry, new_k.transpose(0, 2, 3, 1), new_v.transpose(0, 2, 1, 3), mask[..., C:]
    )
    out = acc / denom[..., None]
    return out.transpose(0, 3, 1, 2, 4).reshape(B, P, N, E).astype(cache_v.dtype)
