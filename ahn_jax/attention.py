"""Attention masks and the attention op the decoder calls.

Mode "full" is plain causal attention. The sink+window modes of the AHN issue add their masks and
the dispatch to `kernels/` implementations here, so the decoder never builds a mask itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite, so a fully masked row gives a uniform softmax instead of NaN


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
