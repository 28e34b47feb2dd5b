"""Dense sink + window attention, straight from the mask (the oracle), and attention over explicit
key sets (the decode cache).

Layout: q [B, T, N, H], k [B, U, K, H], v [B, U, K, E], with G = N / K query heads per key/value
head (grouped-query attention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common.masking import MASKED


def visible(q_pos, k_pos, window, sinks):
    """The mask, on broadcastable absolute positions: query t sees key s iff s <= t and
    (t - s < window or s < sinks)."""
    return (k_pos <= q_pos) & ((q_pos - k_pos < window) | (k_pos < sinks))


def per_row(value, batch: int, name: str = "window") -> jax.Array:
    """A window or sink count as int32 [B]: a scalar is shared by the rows, a [B] array gives each
    row its own (concrete or traced either way)."""
    value = jnp.asarray(value, jnp.int32)
    if value.shape not in ((), (batch,)):
        raise ValueError(
            f"{name} must be a scalar or one value per row ({batch},), got {value.shape}"
        )
    return jnp.broadcast_to(value, (batch,))


def row_mask(window_B, sinks_B, q_pos, k_pos):
    """visible() per row: [B, len(q_pos), len(k_pos)] from int32 [B] windows and sinks."""
    return visible(q_pos[None, :, None], k_pos[None, None, :], window_B[:, None, None],
                   sinks_B[:, None, None])  # fmt: skip


def grouped_softmax_attention(q_BTKGH, k_BUKH, v_BUKE, mask, scale):
    """Attention over explicit key sets; mask broadcasts to [B, K, G, T, U]."""
    s = jnp.einsum("BTKGH,BUKH->BKGTU", q_BTKGH, k_BUKH, preferred_element_type=jnp.float32)
    s = jnp.where(mask, s * scale, MASKED)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("BKGTU,BUKE->BTKGE", p.astype(v_BUKE.dtype), v_BUKE)


def masked_attention(q, k, v, mask, *, scale=None):
    """Attention over explicit keys (e.g. a decode cache plus new tokens): mask [T, U] or
    [B, T, U] says which key each query sees; every query must see at least one key."""
    B, T, N, H = q.shape
    K = k.shape[2]
    scale = H**-0.5 if scale is None else scale
    mask = mask[:, None, None] if mask.ndim == 3 else mask
    o = grouped_softmax_attention(q.reshape(B, T, K, N // K, H), k, v, mask, scale)
    return o.reshape(B, T, N, v.shape[-1])


def reference(q, k, v, window, sinks, scale):
    """The dense [T, T] mask of each row; W and S scalars or [B], may be traced. Returns
    [B, T, N, E]."""
    B, T, N, H = q.shape
    K = k.shape[2]
    pos = jnp.arange(T)
    mask = row_mask(per_row(window, B), per_row(sinks, B, "sinks"), pos, pos)
    o = grouped_softmax_attention(q.reshape(B, T, K, N // K, H), k, v, mask[:, None, None], scale)
    return o.reshape(B, T, N, v.shape[-1])
