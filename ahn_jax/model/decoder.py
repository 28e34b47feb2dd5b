"""One decoder layer: the Qwen2 block, with the layer's AHN memory in mode "ahn".

The parallel forward (`__call__`, training and scoring) and the cached path (`with_cache`, prefill
and decode) share the projections, the memory read and the residual tail, so the two cannot drift
apart; docs/method.md §Method says where the memory plugs in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax.config import ModelConfig
from ahn_jax.model import cache as cache_lib
from ahn_jax.model import kernel_choice, layers, memory
from kernels import window_attention

# Slots per block in which prefill reads a cache (window_attention.skipping_attention), skipping
# the blocks no query sees, such as those still empty; caches up to one block are scored whole.
CACHE_BLOCK = 1024


def _masked_where(keep_BT, x):
    """x [B, T, ...] where `keep_BT`, else 0."""
    return jnp.where(_expand(keep_BT, x.ndim), x, 0)


def _gather_evicted(arrays: dict, new: dict, plan) -> dict:
    """The k, v and gates at `plan.evict_index` of `cache slots ++ new tokens` (one layer's arrays,
    whose "evicted_gates" were read at `plan.evict_slot`, then the call's new items [B, P, ...])
    without joining the two."""
    index_BP, C = plan.evict_index, arrays["v"].shape[1]
    from_cache = cache_lib.gather_slots(arrays, plan.evict_slot)
    from_cache["gates"] = arrays["evicted_gates"]
    in_cache = index_BP < C
    new_index = jnp.clip(index_BP - C, 0, index_BP.shape[1] - 1)

    def pick(cached, fresh):
        from_new = cache_lib.gather_rows(fresh, new_index)
        return jnp.where(_expand(in_cache, cached.ndim), cached, from_new)

    return jax.tree.map(pick, from_cache, new)


def _expand(keep_BT, ndim: int):
    return keep_BT.reshape(keep_BT.shape + (1,) * (ndim - 2))


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, ahn_output_init: str = "zeros"):
        self.input_norm = layers.RMSNorm(config.hidden_size, config)
        self.attn = layers.AttentionProjections(config, rngs)
        self.post_attn_norm = layers.RMSNorm(config.hidden_size, config)
        self.mlp = layers.SwiGLU(config, rngs)
        self.kernels = config.kernels  # resolved when traced: kernel_choice.resolve
        if config.ahn_type is not None:
            self.ahn = memory.make_memory(config, rngs, ahn_output_init)

    def _project(self, x_BTD, cos_BTH, sin_BTH):
        h = self.input_norm(x_BTD)
        q, k, v = self.attn.qkv(h)
        return h, layers.apply_rope(q, cos_BTH, sin_BTH), layers.apply_rope(k, cos_BTH, sin_BTH), v

    def _finish(self, x_BTD, attn_BTNH):
        x_BTD = x_BTD + self.attn.out(attn_BTNH)
        return x_BTD + self.mlp(self.post_attn_norm(x_BTD))

    def __call__(
        self, x_BTD, cos_BTH, sin_BTH, *, mode="full", window=None, sinks=0, with_attention=False
    ):
        """The parallel forward; `with_attention` also returns the pre-o_proj attention output
        (AHN output included), which the per-layer `distill` loss compares."""
        h, q, k, v = self._project(x_BTD, cos_BTH, sin_BTH)
        if mode == "full":
            attn = self._attention(q, k, v, None, 0)
        else:
            attn = self._attention(q, k, v, window, sinks)
        if mode == "ahn":
            attn = attn + self.memory(h, q, k, v, window, sinks)
        out = self._finish(x_BTD, attn)
        return (out, attn) if with_attention else out

    def _attention(self, q_BTNH, k_BTKH, v_BTKH, window, sinks):
        """Causal attention (`window` None) or sinks + window, each a scalar or int32 [B]."""
        impl = kernel_choice.resolve(self.kernels).attention
        if impl != "pallas":
            return window_attention.causal_attention(
                q_BTNH, k_BTKH, v_BTKH, window=window, sinks=sinks, impl=impl
            )
        B = q_BTNH.shape[0]
        per_row = None if window is None else window_attention.per_row(window, B)
        sinks_B = window_attention.per_row(sinks, B, "sinks")

        def run(q, k, v, window_B, sinks_B):
            return window_attention.causal_attention(
                q, k, v, window=window_B, sinks=sinks_B, impl="pallas"
            )

        return kernel_choice.per_shard(
            run, (q_BTNH, k_BTKH, v_BTKH, per_row, sinks_B), ("BTNH", "BTNH", "BTNH", "B", "B"),
            "BTNH", head_counts=(q_BTNH.shape[2], k_BTKH.shape[2]),
        )  # fmt: skip

    def memory(self, h_BTD, q_BTNH, k_BTKH, v_BTKH, window, sinks):
        """The AHN output [B, T, N, H] of the parallel forward. The memory runs over all T
        positions, item t holding the token t - W that leaves the window as t arrives; items
        with nothing to evict (t < S + W) get identity gates, so shapes never depend on W, S.
        `window` and `sinks` are scalars or int32 [B] (each row evicts by its own pair)."""
        B, T = q_BTNH.shape[:2]
        t = jnp.arange(T)[None, :]
        window_B1 = window_attention.per_row(window, B)[:, None]
        sinks_B1 = window_attention.per_row(sinks, B, "sinks")[:, None]
        evict_BT = jnp.broadcast_to(jnp.maximum(t - window_B1, 0), (B, T))
        sources = (k_BTKH, v_BTKH, self.ahn.write_gates(h_BTD))
        evicted = jax.tree.map(lambda x: cache_lib.gather_rows(x, evict_BT), sources)
        y, _ = self._read_memory(
            h_BTD,
            q_BTNH,
            evicted,
            t - window_B1 >= sinks_B1,
            state=None,
            impl=kernel_choice.resolve(self.kernels).recurrence,
        )
        return y

    def _read_memory(self, h_BTD, q_BTNH, evicted, evicting, state, impl):
        """Write the evicted items (k [B, T, K, H], v and gates, `evicted`; identity gates where
        not `evicting` [B, T]) and read with the current queries: the one memory path of the
        parallel forward and of prefill/decode. Returns (y, final state)."""
        B, T, N = q_BTNH.shape[:3]
        evicting_BT = jnp.broadcast_to(evicting, (B, T))
        k, v, gates = evicted
        gates = {n: _masked_where(evicting_BT, g) for n, g in gates.items()}
        k_ev, v_ev = (memory.repeat_kv(x, N).astype(q_BTNH.dtype) for x in (k, v))
        o, state = self.ahn.recurrence(q_BTNH, k_ev, v_ev, gates, state, impl)
        return _masked_where(evicting_BT, self.ahn.output(o, h_BTD)), state

    def with_cache(self, x_BTD, cos_BTH, sin_BTH, arrays: dict, plan, mode: str):
        """P new tokens per row against this layer's cache arrays (`DecodeCache.window_layer` or
        `full_layer`; ahn_jax/model/cache.py; in mode "ahn" also "evicted_gates", the cached gates
        at `plan.evict_slot`, `DecodeCache.read_gates`). Returns the new hidden states and the
        layer's arrays with the new tokens' k, v written to their slots (`plan.write_slot`), the
        memory's new state and "new_gates" (the new tokens' gates, none outside mode "ahn", which
        the caller writes for all layers at once: `DecodeCache.write_gates`).

        One token per row (`plan.write_first`, a decode step) is written before the layer reads:
        the reads then follow the write, so XLA updates the donated buffers in place. A block of
        P > 1 reads the old slots and its own new keys and is written afterwards."""
        h, q, k, v = self._project(x_BTD, cos_BTH, sin_BTH)
        # the new keys are read as the cache stores them, now and in every later step
        k, v = k.astype(arrays["k"].dtype), v.astype(arrays["v"].dtype)
        # outside mode "ahn" the arrays hold no gates either (DecodeCache: gates exist in "ahn")
        new = {"k": k, "v": v, "gates": self.ahn.write_gates(h) if mode == "ahn" else {}}
        if plan.write_first:
            arrays = cache_lib.write_slots(arrays, new, plan.write_slot)
            k_blocks, v_blocks, layouts = (arrays["k"],), (arrays["v"],), ("BKHU",)
        else:
            k_blocks, v_blocks = (arrays["k"], k), (arrays["v"], v)
            layouts = ("BKHU", "BUKH")
        k_blocks, v_blocks = (tuple(b.astype(q.dtype) for b in x) for x in (k_blocks, v_blocks))
        if not plan.write_first and arrays["k"].shape[-1] > CACHE_BLOCK:
            # in blocks: a cache still filling (a full-attention one, or a ring while the prompt
            # is shorter than S + W) skips its empty slots, and a full one's scores stay small
            attn = window_attention.skipping_attention(
                q, k_blocks[0], v_blocks[0], k_blocks[1], v_blocks[1], plan.mask,
                block=CACHE_BLOCK,
            )  # fmt: skip
        else:
            attn = window_attention.masked_attention(
                q, k_blocks, v_blocks, plan.mask, key_layouts=layouts
            )
        if mode == "ahn":
            # written first, the evicted token is always still in its slot (the ring holds W + 1)
            evicted = (
                {**cache_lib.gather_slots(arrays, plan.evict_index),
                 "gates": arrays["evicted_gates"]}
                if plan.write_first
                else _gather_evicted(arrays, new, plan)
            )  # fmt: skip
            y, state = self._read_memory(
                h,
                q,
                (evicted["k"], evicted["v"], evicted["gates"]),
                plan.evicting,
                state=arrays["state"],
                impl=memory.recurrence_impl(
                    q.shape[1], kernel_choice.resolve(self.kernels).recurrence
                ),
            )
            attn = attn + y
            arrays = {**arrays, "state": state}
        if not plan.write_first:
            arrays = cache_lib.write_slots(arrays, new, plan.write_slot)
        return self._finish(x_BTD, attn), {**arrays, "new_gates": new["gates"]}
