"""The traced computation behind prefill and decode: P new tokens per row against the cache.

One `lax.scan` runs the layers, each reading its slice of the cache; only what the call adds is
written back — the new tokens' k, v and gates scattered into their slots and the memory's state —
so that a decode step writes O(P) slots per layer, not the whole cache (with the cache donated, as
`ahn_jax.inference.generate` does, XLA updates it in place). With layers kept as full attention
the cache rides in the scan's carry and `lax.cond` picks per layer the windowed group's slots
(S + W, memory in mode "ahn") or the full group's (the whole context, no memory), each layer
indexed by its place in its group. Shapes: docs/method.md §Shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ahn_jax.model.cache import DecodeCache, extend_plan


def cached_logits(model, input_ids_BP, cache: DecodeCache, new_B, *, all_logits, decoding):
    """(logits, new cache) for input_ids [B, P] of which the first new_B[b] are real in row b:
    the logits of every position [B, P, V] with `all_logits`, else each row's last real one
    [B, V]. `decoding` marks a decode step (where `decode="reference"` changes the mask)."""
    B, P = input_ids_BP.shape
    plan = extend_plan(
        cache.slot_pos,
        cache.length,
        window=cache.window,
        sinks=cache.sinks,
        num_new=P,
        new=new_B,
        reference=decoding and cache.decode == "reference",
    )
    full_plan = None  # no plan (and no scatter into the empty arrays) without full layers
    if cache.full_layers:
        full_plan = extend_plan(
            cache.full_slot_pos, cache.length, window=cache.full_capacity, sinks=0, num_new=P,
            new=new_B,
        )  # fmt: skip
    x, cos, sin = model._embed(input_ids_BP, plan.positions)
    x, arrays, full = _layers(model, x, (cos, sin), cache, plan, full_plan)
    if not all_logits:  # each row's last real token
        last = jnp.clip(new_B - 1, 0, P - 1)
        x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    logits = model._vocab_logits(model.final_norm(x))
    return logits, cache.replace(
        **arrays,
        full_k=full["k"],
        full_v=full["v"],
        slot_pos=plan.slot_pos,
        full_slot_pos=full_plan.slot_pos if cache.full_layers else cache.full_slot_pos,
        length=cache.length + new_B,
    )


def _index(tree, i):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _write(arrays: dict, writes: dict, slot_BP, layer=slice(None)) -> dict:
    """`arrays` (stacked over a group's layers) with the writes of `layer` (an index), or of every
    layer (writes stacked [L, B, P, ...]): the new tokens' items at their slots (a slot of C drops
    the item) and, where the group has a memory, its state."""
    rows = jnp.arange(slot_BP.shape[0])[:, None]

    def scatter(stacked, new):
        return stacked.at[layer, rows, slot_BP].set(new.astype(stacked.dtype), mode="drop")

    out = {name: scatter(arrays[name], writes[name]) for name in ("k", "v")}
    if "gates" in arrays:
        out["gates"] = {n: scatter(g, writes["gates"][n]) for n, g in arrays["gates"].items()}
        out["state"] = arrays["state"].at[layer].set(writes["state"])
    return out


def _layers(model, x, rope, cache: DecodeCache, plan, full_plan):
    """Every layer in order, each against its own group's cache (module docstring)."""
    cos, sin = rope
    full = {"k": cache.full_k, "v": cache.full_v}
    if not cache.full_layers:
        # the layers read their slices as scanned inputs and hand out only their writes, which
        # join the cache in one scatter after the scan: nothing big is carried or copied per layer
        def read_layer(x, inputs):
            layer, arrays = inputs
            return layer.with_cache(x, cos, sin, arrays, plan, cache.mode)

        x, writes = jax.lax.scan(read_layer, x, (model.layers, cache.layer_arrays()))
        return x, _write(cache.layer_arrays(), writes, plan.write_slot), full
    L = model.config.num_layers
    is_full = np.isin(np.arange(L), cache.full_layers)
    group_index = np.where(is_full, np.cumsum(is_full) - 1, np.cumsum(~is_full) - 1)

    def window_layer(layer, g, carry):
        x, arrays, full = carry
        x, writes = layer.with_cache(x, cos, sin, _index(arrays, g), plan, cache.mode)
        return x, _write(arrays, writes, plan.write_slot, g), full

    def full_layer(layer, g, carry):
        x, arrays, full = carry
        own = {**_index(full, g), "gates": {}, "state": jnp.zeros(())}
        x, writes = layer.with_cache(x, cos, sin, own, full_plan, "full")  # no memory there
        return x, arrays, _write(full, writes, full_plan.write_slot, g)

    def layer_step(carry, inputs):
        layer, full_here, g = inputs
        if is_full.all():  # no windowed layer: nothing to index on that side
            return full_layer(layer, g, carry), None
        branches = (lambda c: window_layer(layer, g, c), lambda c: full_layer(layer, g, c))
        return jax.lax.cond(full_here, branches[1], branches[0], carry), None

    carry = (x, cache.layer_arrays(), full)
    xs = (model.layers, jnp.asarray(is_full), jnp.asarray(group_index, jnp.int32))
    (x, arrays, full), _ = jax.lax.scan(layer_step, carry, xs)
    return x, arrays, full
