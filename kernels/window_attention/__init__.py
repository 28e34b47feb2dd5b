"""Sink + sliding-window causal attention: query t sees key s iff s <= t and (t - s < W or s < S).

impls of `sink_window_attention`:
  "reference"  dense [T, T] mask (`naive`, the oracle); W and S may be traced.
  "blocked"    XLA, blocks of queries against the key blocks that hold a visible key, online softmax
               (`blocked`): compute proportional to T (W + S); W and S may be traced (one compile
               for all of them). The same path serves `causal_attention`, which the model runs.
  "pallas"     Pallas TPU kernels, forward and backward (`pallas_window`; interpret mode off TPU):
               W and S are scalar-prefetch operands, so traced and per-row values share one
               compile; key blocks with no visible key are skipped per row. `causal_attention`
               runs it with impl="pallas".
  "splash"     Pallas TPU splash attention with a fused sink-or-local mask (`pallas`; interpret
               mode off TPU); W and S must be Python ints (the mask is preprocessed per (T, W, S)).
"reference", "blocked" and "pallas" also take W and S per row (int32 [B]: row b sees its own sinks
and window, as if called alone); splash takes one pair for the batch.
Layout q [B, T, N, H], k [B, T, K, H], v [B, T, K, E]: k/v may have fewer heads than q
(grouped-query attention, K dividing N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.window_attention import blocked, naive
from kernels.window_attention.cache_blocks import skipping_attention
from kernels.window_attention.naive import masked_attention, per_row, visible

IMPLS = ("reference", "blocked", "pallas", "splash")
CAUSAL_IMPLS = ("blocked", "pallas")  # `impl` of causal_attention
# query/key block of the blocked path; sequences up to one block take the dense path
BLOCK = 512

__all__ = [
    "BLOCK",
    "CAUSAL_IMPLS",
    "IMPLS",
    "causal_attention",
    "masked_attention",
    "per_row",
    "sink_window_attention",
    "skipping_attention",
    "visible",
]


def _static_int(x, name):
    if jnp.ndim(x) != 0:
        raise ValueError(
            f"{name} has shape {jnp.shape(x)}: impl='splash' takes one {name} for the whole "
            f"batch (a Python int); per-row values need impl='blocked' or 'reference'"
        )
    try:
        return int(x)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(
            f"{name} is traced: impl='splash' needs a Python int (impl='blocked' takes traced ones)"
        ) from e


def sink_window_attention(q, k, v, *, window, sinks, scale=None, impl="reference", block_size=128):
    """Causal attention restricted to S sinks plus a window of W keys (the query's own included).

    q [B, T, N, H], k [B, T, K, H], v [B, T, K, E] -> [B, T, N, E]. `window` and `sinks` are
    scalars or int32 [B] (one per row; not with impl="splash"). `block_size` is the query and key
    block of impl="blocked" and impl="pallas" (on TPU a multiple of 128).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    B, T, N, H = q.shape
    if k.ndim != 4 or k.shape[:2] != (B, T) or v.shape[:3] != k.shape[:3] or N % k.shape[2]:
        raise ValueError(
            f"k, v must be [B, T, K, H] with K dividing q's {N} heads; got {k.shape}, {v.shape}"
        )
    scale = H**-0.5 if scale is None else scale
    if impl == "reference":
        return naive.reference(q, k, v, window, sinks, scale)
    if impl == "pallas":
        from kernels.window_attention import pallas_window

        return pallas_window.attention(
            q, k, v, window, sinks, scale, block_q=block_size, block_k=block_size
        )
    if impl == "splash":
        from kernels.window_attention import pallas  # Pallas is imported only when asked for

        return pallas.attention(
            q, k, v, _static_int(window, "window"), _static_int(sinks, "sinks"), scale
        )
    return blocked.blocked(q, k, v, window, sinks, scale, block_size)


def causal_attention(
    q, k, v, *, scale=None, block: int = BLOCK, window=None, sinks=0, impl: str = "blocked"
):
    """Causal attention, optionally restricted to `sinks` + `window` (both may be traced, and
    either a scalar or int32 [B], one per row; window=None is plain causal).

    impl="blocked": the blocked path (kernels/window_attention/blocked.py; a sequence up to `block`
    long is one block): beyond one block the [T, T] score matrix is never formed and key blocks
    with no visible key are skipped, so compute follows what is visible (T^2 / 2 causal, T (W + S)
    windowed) while one compile serves every W and S; differentiable.
    impl="pallas": the Pallas kernels of kernels/window_attention/pallas_window.py at every length
    (`block` is their query and key block; on TPU a multiple of 128), forward and backward, W and S
    read at run time (one compile for every W and S), key blocks skipped per row.
    """
    if impl not in CAUSAL_IMPLS:
        raise ValueError(f"impl must be one of {CAUSAL_IMPLS}, got {impl!r}")
    T, H = q.shape[1], q.shape[-1]
    scale = H**-0.5 if scale is None else scale
    if impl == "pallas":
        from kernels.window_attention import pallas_window

        return pallas_window.attention(q, k, v, window, sinks, scale, block_q=block, block_k=block)
    window = T if window is None else window
    # a sequence up to one block is that one block: the same online-softmax step costs half the
    # dense reference on XLA:CPU (whose [T, T] mask select ran slowly; bench/forward_parts.py)
    return blocked.blocked(q, k, v, window, sinks, scale, min(block, T))
