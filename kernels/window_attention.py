"""Sink + sliding-window causal attention: query t sees key s iff s <= t and (t - s < W or s < S).

impls:
  "reference"  dense [T, T] mask; W and S may be traced.
  "blocked"    pure JAX, compute and memory proportional to T (W + S): each block of queries attends
               to the static-size band of key blocks that can hold its window, plus the sink prefix.
               W and S may be traced, below static bounds `max_window` / `max_sinks`.
  "splash"     Pallas TPU splash attention with a fused sink-or-local mask (interpret mode off TPU);
               W and S must be Python ints (the mask is preprocessed on the host per (T, W, S)).
Layout [B, T, H, D]; k/v may have fewer heads than q (grouped-query attention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("reference", "blocked", "splash")
MASKED = -1e30  # finite: a fully masked row would give a uniform softmax, never NaN


def visible(q_pos, k_pos, window, sinks):
    """The mask, on broadcastable absolute positions."""
    return (k_pos <= q_pos) & ((q_pos - k_pos < window) | (k_pos < sinks))


def _grouped_softmax_attention(q_BTKGD, k_BSKD, v_BSKD, mask, scale):
    """Attention over explicit key sets; mask broadcasts to [B, K, G, T, S]."""
    s = jnp.einsum("BTKGD,BSKD->BKGTS", q_BTKGD, k_BSKD, preferred_element_type=jnp.float32)
    s = jnp.where(mask, s * scale, MASKED)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("BKGTS,BSKD->BTKGD", p.astype(v_BSKD.dtype), v_BSKD)


def masked_attention(q, k, v, mask, *, scale=None):
    """Attention over explicit keys (e.g. a decode cache plus new tokens): mask [T, S] or
    [B, T, S] says which key each query sees; every query must see at least one key."""
    B, T, N, D = q.shape
    K = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    mask = mask[:, None, None] if mask.ndim == 3 else mask
    o = _grouped_softmax_attention(q.reshape(B, T, K, N // K, D), k, v, mask, scale)
    return o.reshape(B, T, N, v.shape[-1])


def _reference(q, k, v, window, sinks, scale):
    B, T, N, D = q.shape
    K = k.shape[2]
    pos = jnp.arange(T)
    mask = visible(pos[:, None], pos[None, :], window, sinks)
    o = _grouped_softmax_attention(q.reshape(B, T, K, N // K, D), k, v, mask, scale)
    return o.reshape(B, T, N, v.shape[-1])


def _blocked(q, k, v, window, sinks, scale, max_window, max_sinks, block):
    B, T, N, D = q.shape
    K, Dv = k.shape[2], v.shape[-1]
    G = N // K
    n_q = -(-T // block)
    n_band = -(-(max_window - 1) // block) + 1  # key blocks that can hold a window of max_window
    sink_len = min(-(-max_sinks // block) * block, n_q * block) if max_sinks > 0 else 0

    def pad(x, front, back):
        return jnp.pad(x, ((0, 0), (front, back), (0, 0), (0, 0)))

    tail = n_q * block - T
    q_blocks = pad(q, 0, tail).reshape(B, n_q, block, K, G, D)
    # keys padded in front so that query block i's band starts at padded index i * block
    front = (n_band - 1) * block
    k_pad, v_pad = pad(k, front, tail), pad(v, front, tail)
    starts = jnp.arange(n_q) * block

    def band(x):
        return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(x, s, n_band * block, axis=1))(
            starts
        )  # [n_q, B, n_band * block, K, D]

    k_band, v_band = band(k_pad), band(v_pad)
    q_pos = starts[:, None] + jnp.arange(block)[None, :]  # [n_q, block]
    band_pos = starts[:, None] - front + jnp.arange(n_band * block)[None, :]
    band_mask = (band_pos[:, None, :] >= 0) & visible(
        q_pos[:, :, None], band_pos[:, None, :], window, 0
    )
    if sink_len:
        sink_pos = jnp.arange(sink_len)
        # sink keys that the band already covers are masked here, so none counts twice
        sink_mask = (sink_pos[None, None, :] < sinks) & (
            (sink_pos[None, None, :] <= q_pos[:, :, None])
            & (q_pos[:, :, None] - sink_pos[None, None, :] >= window)
        )
        # from the padded keys: the sink blocks may reach past T (T < sink_len)
        sink_keys = slice(front, front + sink_len)
        k_sink = jnp.broadcast_to(k_pad[:, sink_keys], (n_q, B, sink_len, K, D))
        v_sink = jnp.broadcast_to(v_pad[:, sink_keys], (n_q, B, sink_len, K, Dv))
        k_band = jnp.concatenate([k_sink, k_band], axis=2)
        v_band = jnp.concatenate([v_sink, v_band], axis=2)
        band_mask = jnp.concatenate(
            [jnp.broadcast_to(sink_mask, (n_q, block, sink_len)), band_mask], axis=-1
        )

    def one_block(q_b, k_b, v_b, mask_b):
        return _grouped_softmax_attention(q_b, k_b, v_b, mask_b[None, None, None], scale)

    o = jax.vmap(one_block)(jnp.moveaxis(q_blocks, 1, 0), k_band, v_band, band_mask)
    return jnp.moveaxis(o, 0, 1).reshape(B, n_q * block, N, Dv)[:, :T]


def _static_int(x, name):
    try:
        return int(x)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(
            f"{name} is traced: impl='splash' needs a Python int, impl='blocked' a static "
            f"bound max_{name}=..."
        ) from e


def sink_window_attention(
    q,
    k,
    v,
    *,
    window,
    sinks,
    scale=None,
    impl="reference",
    max_window=None,
    max_sinks=None,
    block_size=128,
):
    """Causal attention restricted to S sinks plus a window of W keys (the query's own included).

    `max_window` / `max_sinks` (impl="blocked") are static upper bounds on traced W and S; with
    Python-int W and S they default to them. A window above its bound would be silently cut, so a
    concrete one is checked here.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    B, T, N, D = q.shape
    if k.ndim != 4 or k.shape[:2] != (B, T) or v.shape[:3] != k.shape[:3] or N % k.shape[2]:
        raise ValueError(
            f"k, v must be [B, T, K, D] with K dividing q's {N} heads; got {k.shape}, {v.shape}"
        )
    scale = D**-0.5 if scale is None else scale
    if impl == "reference":
        return _reference(q, k, v, window, sinks, scale)
    if impl == "splash":
        from kernels import splash_window

        return splash_window.attention(
            q, k, v, _static_int(window, "window"), _static_int(sinks, "sinks"), scale
        )
    max_window = _static_int(window, "window") if max_window is None else int(max_window)
    max_sinks = _static_int(sinks, "sinks") if max_sinks is None else int(max_sinks)
    for name, value, bound in (("window", window, max_window), ("sinks", sinks, max_sinks)):
        try:
            concrete = int(value)
        except (TypeError, jax.errors.ConcretizationTypeError):
            continue  # traced: the static bound is the caller's promise
        if concrete > bound:
            raise ValueError(f"{name}={concrete} exceeds its static bound max_{name}={bound}")
    return _blocked(q, k, v, window, sinks, scale, max(max_window, 1), max_sinks, block_size)


def causal_attention(q, k, v, *, scale=None, block: int = 512, window=None, sinks=0):
    """Causal attention, optionally restricted to `sinks` + `window` (both may be traced).

    Sequences longer than `block` go block by block: the [T, T] score matrix is never formed and
    key blocks that hold no visible key (above the diagonal, or outside both the sink prefix and
    the query block's window band) are skipped with `lax.cond`, an online softmax across the
    rest. So compute follows what is visible (T^2 / 2 causal, T (W + S) windowed) while one
    compile serves every W and S; differentiable.
    """
    T, D = q.shape[1], q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    window = T if window is None else window
    if T <= block:
        return _reference(q, k, v, window, sinks, scale)
    return _blocked_causal(q, k, v, block, scale, window, sinks)


def _blocked_causal(q_BTNH, k_BTKH, v_BTKH, block: int, scale: float, window, sinks):
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
    within = jnp.arange(block)

    def query_block(_, inputs):
        i, q_BKGbH = inputs
        q_pos = i * block + within

        def key_block(carry, key_inputs):
            j, k_BKbH, v_BKbH = key_inputs
            # the block's last key reaches the window of the block's first query, or is a sink
            needed = (j <= i) & (((j + 1) * block - 1 > i * block - window) | (j * block < sinks))

            def update(carry):
                row_max, denom, acc = carry
                s = jnp.einsum(
                    "BKGTH,BKSH->BKGTS", q_BKGbH, k_BKbH, preferred_element_type=jnp.float32
                )
                seen = visible(q_pos[:, None], (j * block + within)[None, :], window, sinks)
                s = jnp.where(seen, s * scale, MASKED)
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

            # rematerialised: the gradient keeps the small running carry per key block, not its
            # [block, block] scores and probabilities
            return jax.lax.cond(needed, jax.checkpoint(update), lambda c: c, carry), None

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

    # rematerialised per query block too: the backward pass holds one query block's key-block
    # carries at a time, so training memory grows with T, not T^2 (a 3B model at 24k tokens)
    _, out = jax.lax.scan(jax.checkpoint(query_block), None, (jnp.arange(n_blocks), q_blocks))
    # [n, B, K, G, block, H] -> [B, T, N, H]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, n_blocks * block, N, H)
    return out[:, :T]
