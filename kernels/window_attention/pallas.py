"""Sink + window attention through Pallas TPU splash attention, with one fused computable mask
(interpret mode off TPU).

The mask `(q >= kv) & ((q - kv < W) | (kv < S))` is evaluated inside the kernel; fully masked
blocks (everything outside the sinks and the band) are skipped, so the cost is O(T (W + S)).
Splash preprocesses masks on the host, so each (T, W, S) is its own kernel (cached here) and a new
compile: W and S must be Python ints (the blocked path takes traced ones).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from kernels.common import pallas_mode

BLOCK = 128  # TPU lane width; sequences are padded to a multiple of it


class SinkWindowMask(masks._ComputableMask):
    """query t sees key s iff s <= t and (t - s < window or s < sinks)."""

    def __init__(self, shape: tuple[int, int], window: int, sinks: int, shard_count: int = 1):
        self.window, self.sinks = window, sinks

        def mask_function(q_ids, kv_ids):
            return (q_ids >= kv_ids) & ((q_ids - kv_ids < window) | (kv_ids < sinks))

        super().__init__(shape=shape, mask_function=mask_function, shard_count=shard_count)

    def __eq__(self, other: object):
        if not isinstance(other, type(self)):
            return NotImplemented
        return (self.shape, self.window, self.sinks) == (
            other.shape,
            other.window,
            other.sinks,
        ) and (np.array_equal(self.q_sequence, other.q_sequence))

    def __hash__(self):
        return hash((type(self), self.shape, self.window, self.sinks, self.q_sequence.tobytes()))


@functools.lru_cache(maxsize=32)
def _kernel(length: int, heads: int, window: int, sinks: int, interpret: bool):
    mask = masks.MultiHeadMask([SinkWindowMask((length, length), window, sinks)] * heads)
    block = BLOCK
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def attention(q, k, v, window: int, sinks: int, scale: float):
    """q [B, T, N, H], k [B, T, K, H], v [B, T, K, E] (K divides N) -> [B, T, N, E]."""
    B, T, N, _ = q.shape
    padded = -(-T // BLOCK) * BLOCK
    pad = ((0, 0), (0, padded - T), (0, 0), (0, 0))  # padded keys come after every real query

    def heads_first(x):
        return jnp.moveaxis(jnp.pad(x, pad), 2, 1)  # [B, heads, T, d]

    kernel = _kernel(padded, N, window, sinks, pallas_mode.interpret())
    out = jax.vmap(kernel)(heads_first(q * scale), heads_first(k), heads_first(v))
    return jnp.moveaxis(out, 1, 2)[:, :T]
