"""Dense sink + window attention, straight from the mask (the oracle), and attention over explicit
key sets (the decode cache).

Layout: q [B, T, N, H], k [B, U, K, H], v [B, U, K, E], with G = N / K query heads per key/value
head (grouped-query attention).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def masked_attention(q, k, v, mask, *, scale=None, key_layouts=None):
    """Attention over explicit keys (e.g. a decode cache plus new tokens): mask [T, U] or
    [B, T, U] says which key each query sees; every query must see at least one key.

    k and v may also be sequences of blocks (k [B, U_i, K, H] each, U = sum U_i), read as if
    concatenated along U: the decode cache and the new tokens are scored in place, one softmax over
    both, without copying the cache into a joint array (at batch 8 that copy, and the layout change
    XLA:CPU made for the product with v, cost about a third of a decode step). `key_layouts`
    names each key block's layout, "BUKH" (default) or "BKHU" (slots last, as the decode cache
    keeps its keys: the q·k product then reads them without a transpose)."""
    k_blocks = (k,) if isinstance(k, jax.Array) else tuple(k)
    v_blocks = (v,) if isinstance(v, jax.Array) else tuple(v)
    layouts = key_layouts or ("BUKH",) * len(k_blocks)
    if len(layouts) != len(k_blocks) or not set(layouts) <= {"BUKH", "BKHU"}:
        raise ValueError(f"key_layouts must give 'BUKH' or 'BKHU' per key block, got {layouts}")
    B, T, N, H = q.shape
    K = v_blocks[0].shape[2]
    scale = H**-0.5 if scale is None else scale
    mask = mask[:, None, None] if mask.ndim == 3 else mask  # [B, 1, 1, T, U] or [T, U]
    q = q.reshape(B, T, K, N // K, H)
    starts = np.cumsum([0] + [block.shape[1] for block in v_blocks])

    def score(block, layout):
        if layout == "BUKH":
            return jnp.einsum("BTKGH,BUKH->BKGTU", q, block, preferred_element_type=jnp.float32)
        # q [B, K, G*T, H] @ k [B, K, H, U]: a plain batched matmul on the keys' own layout
        q_rows = q.transpose(0, 2, 3, 1, 4).reshape(B, K, -1, H)
        s = jnp.matmul(q_rows, block, preferred_element_type=jnp.float32)
        return s.reshape(B, K, N // K, T, -1)

    scores = [
        jnp.where(mask[..., start:end], score(block, layout) * scale, MASKED)
        for block, layout, start, end in zip(
            k_blocks, layouts, starts[:-1], starts[1:], strict=True
        )
    ]
    top = functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s in scores])
    weights = [jnp.exp(s - top) for s in scores]
    total = sum(w.sum(-1, keepdims=True) for w in weights)  # [B, K, G, T, 1]
    G, E = N // K, v_blocks[0].shape[-1]
    # p [B, K, G*T, U_i] @ v [B, K, U_i, E]: a plain batched matmul on v's own layout, summed in
    # fp32 (a bf16 product would round before the division and again after it)
    o = sum(
        jnp.matmul(
            w.reshape(B, K, G * T, -1).astype(block.dtype),
            block.transpose(0, 2, 1, 3),
            preferred_element_type=jnp.float32,
        )
        for w, block in zip(weights, v_blocks, strict=True)
    )
    o = o.reshape(B, K, G, T, E) / total
    return o.transpose(0, 3, 1, 2, 4).reshape(B, T, N, E).astype(v_blocks[0].dtype)


def reference(q, k, v, window, sinks, scale):
    """The dense [T, T] mask of each row; W and S scalars or [B], may be traced. Returns
    [B, T, N, E]."""
    B, T, N, H = q.shape
    K = k.shape[2]
    pos = jnp.arange(T)
    mask = row_mask(per_row(window, B), per_row(sinks, B, "sinks"), pos, pos)
    o = grouped_softmax_attention(q.reshape(B, T, K, N // K, H), k, v, mask[:, None, None], scale)
    return o.reshape(B, T, N, v.shape[-1])
