"""The traced computation behind prefill and decode: P new tokens per row against the cache.

Layers of one kind share a `lax.scan`. With layers kept as full attention the scan runs over all
layers and `lax.cond` picks, per layer, the windowed group's slots (S + W, memory in mode "ahn")
or the full group's (the whole context, no memory); each group's arrays ride in the carry,
indexed by the layer's place in its group. Shapes: docs/method.md §Shapes.
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
    x, cos, sin = model._embed(input_ids_BP, plan.positions)
    replaced = {"slot_pos": plan.slot_pos, "length": cache.length + new_B}
    if cache.full_layers:
        full_plan = extend_plan(
            cache.full_slot_pos,
            cache.length,
            window=cache.full_capacity,
            sinks=0,
            num_new=P,
            new=new_B,
        )
        x, arrays, full = _mixed_layers(model, x, (cos, sin), cache, plan, full_plan)
        replaced.update(full_k=full[0], full_v=full[1], full_slot_pos=full_plan.slot_pos)
    else:

        def layer_step(x_BTD, inputs):
            layer, arrays = inputs
            return layer.with_cache(x_BTD, cos, sin, arrays, plan, cache.mode)

        x, arrays = jax.lax.scan(layer_step, x, (model.layers, cache.layer_arrays()))
    if not all_logits:  # each row's last real token
        last = jnp.clip(new_B - 1, 0, P - 1)
        x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    logits = model._vocab_logits(model.final_norm(x))
    return logits, cache.replace(**arrays, **replaced)


def _index(tree, i):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _update(tree, new, i):
    return jax.tree.map(lambda a, n: jax.lax.dynamic_update_index_in_dim(a, n, i, 0), tree, new)


def _mixed_layers(model, x, rope, cache: DecodeCache, plan, full_plan):
    """Every layer in order, each against its own group's cache (module docstring)."""
    cos, sin = rope
    L = model.config.num_layers
    is_full = np.isin(np.arange(L), cache.full_layers)
    group_index = np.where(is_full, np.cumsum(is_full) - 1, np.cumsum(~is_full) - 1)

    def window_layer(layer, g, carry):
        x, arrays, full = carry
        x, kept = layer.with_cache(x, cos, sin, _index(arrays, g), plan, cache.mode)
        return x, _update(arrays, kept, g), full

    def full_layer(layer, g, carry):
        x, arrays, (full_k, full_v) = carry
        own = {"k": full_k[g], "v": full_v[g], "gates": {}, "state": jnp.zeros(())}
        x, kept = layer.with_cache(x, cos, sin, own, full_plan, "full")  # no memory there
        return x, arrays, _update((full_k, full_v), (kept["k"], kept["v"]), g)

    def layer_step(carry, inputs):
        layer, full_here, g = inputs
        if not (~is_full).any():  # no windowed layer: nothing to index on that side
            return full_layer(layer, g, carry), None
        branches = (lambda c: window_layer(layer, g, c), lambda c: full_layer(layer, g, c))
        return jax.lax.cond(full_here, branches[1], branches[0], carry), None

    carry = (x, cache.layer_arrays(), (cache.full_k, cache.full_v))
    xs = (model.layers, jnp.asarray(is_full), jnp.asarray(group_index, jnp.int32))
    (x, arrays, full), _ = jax.lax.scan(layer_step, carry, xs)
    return x, arrays, full
