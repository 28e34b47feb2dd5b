"""Attention masks and the attention op the decoder calls.

Mode "full" is plain causal attention. The sink+window modes of the AHN issue add their masks and
the dispatch to `kernels/` implementations here, so the decoder never builds a mask itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite, so a fully masked row gives a uniform softmax instead of NaN
BLOCK = 512  # query/key block of the blocked path; sequences up to one block use the dense path


def causal_mask(query_len: int, key_len: int) -> jax.Array:
    """[T, S] bool: query t (the last `query_len` of `key_len` positions) sees keys s <= t."""
    offset = key_len - query_len
    q_idx = jnp.arange(query_len)[:, None] + offset
    k_idx = jnp.arange(key_len)[None, :]
    return k_idx <= q_idx


def attend(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_TS: jax.Array
) -> jax.Array:
    """Softmax attention with grouped-query heads (N = K * G); scores and softmax in fp32."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) * (H**-0.5)
    scores = jnp.where(mask_TS, scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BSKH.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BSKH)
    return out.reshape(B, T, N, H)


def causal_attention(
    q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, *, block: int = BLOCK
) -> jax.Array:
    """Causal self-attention; long sequences go block by block with an online softmax.

    The blocked path never forms the [T, T] score matrix and skips key blocks above the diagonal
    (`lax.cond`), so it does half the work of the dense path in memory that fits a cache; both
    are one compile whatever T, and differentiable.
    """
    T = q_BTNH.shape[1]
    if T <= block:
        return attend(q_BTNH, k_BTKH, v_BTKH, causal_mask(T, T))
    return _blocked_causal(q_BTNH, k_BTKH, v_BTKH, block)


def _blocked_causal(q_BTNH, k_BTKH, v_BTKH, block: int) -> jax.Array:
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    G = N // K
    n_blocks = -(-T // block)
    pad = n_blocks * block - T  # padded keys sit after every real query: the causal mask hides them

    def to_blocks(x, heads):  # [B, T, heads, H] -> [n, B, heads, block, H]
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return x.reshape(B, n_blocks, block, heads, H).transpose(1, 0, 3, 2, 4)

    q_blocks = to_blocks(q_BTNH, N).reshape(n_blocks, B, K, G, block, H)
    k_blocks, v_blocks = to_blocks(k_BTKH, K), to_blocks(v_BTKH, K)
    scale = H**-0.5
    within = jnp.arange(block)

    def query_block(_, inputs):
        i, q_BKGbH = inputs

        def key_block(carry, key_inputs):
            j, k_BKbH, v_BKbH = key_inputs

            def update(carry):
                row_max, denom, acc = carry
                s = jnp.einsum(
                    "BKGTH,BKSH->BKGTS", q_BKGbH, k_BKbH, preferred_element_type=jnp.float32
                )
                visible = (j * block + within)[None, :] <= (i * block + within)[:, None]
                s = jnp.where(visible, s * scale, MASKED)
                new_max = jnp.maximum(row_max, s.max(-1))
                p = jnp.exp(s - new_max[..., None])
                correction = jnp.exp(row_max - new_max)
                pv = jnp.einsum(
                    "BKGTS,BKSH->BKGTH",
                    p.astype(v_BKbH.dtype),
                    v_BKbH,
                    preferred_element_type=jnp.float32,
                )
                return new_max, denom * correction + p.sum(-1), acc * correction[..., None] + pv

            return jax.lax.cond(j <= i, update, lambda c: c, carry), None

        shape = q_BKGbH.shape[:-1]
        init = (
            jnp.full(shape, MASKED, jnp.float32),
            jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, H), jnp.float32),
        )
        (_, denom, acc), _ = jax.lax.scan(
            key_block, init, (jnp.arange(n_blocks), k_blocks, v_blocks)
        )
        return None, (acc / denom[..., None]).astype(q_BKGbH.dtype)

    _, out = jax.lax.scan(query_block, None, (jnp.arange(n_blocks), q_blocks))
    # [n, B, K, G, block, H] -> [B, T, N, H]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, n_blocks * block, N, H)
    return out[:, :T]
