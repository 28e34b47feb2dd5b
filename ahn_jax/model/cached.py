"""The traced computation behind prefill and decode: P new tokens per row against the cache.

The layers run unrolled, each against its own cache arrays: the windowed group's slots
(S + W + 1, memory in mode "ahn") or, for layers kept as full attention, the full group's (the
whole context, no memory). The AHN gates of every windowed layer share one array, read once
before the layers (what each evicts) and written once after them. Only what the call adds is
written — the new tokens' k, v and gates scattered into their slots and the memory's state — so a
decode step writes O(P) slots per layer, not the whole cache (with the cache donated, as
`ahn_jax.inference.generate` does, XLA updates it in place). A `lax.scan` over the stacked layers
would be one compiled body, but XLA:CPU copies each layer's slice of a stacked cache out for the
attention products: at batch 8 of the tiny model those copies were the largest part of a decode
step (docs/benchmarks.md, ragged decode).
The same holds for weights: a model from `layerwise.unstack_layers` (what `generate` decodes
with on the CPU) hands each layer its own arrays; a stacked one is sliced here, per layer.
Shapes: docs/method.md §Shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ahn_jax.model.cache import DecodeCache
from ahn_jax.model.slots import extend_plan


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
    x, arrays = _layers(model, x, (cos, sin), cache, plan, full_plan)
    if not all_logits:  # each row's last real token
        last = jnp.clip(new_B - 1, 0, P - 1)
        x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    logits = model._vocab_logits(model.final_norm(x))
    return logits, cache.replace(
        **arrays,
        slot_pos=plan.slot_pos,
        full_slot_pos=full_plan.slot_pos if cache.full_layers else cache.full_slot_pos,
        length=cache.length + new_B,
    )


def _layers(model, x, rope, cache: DecodeCache, plan, full_plan):
    """Every layer in order, each against its own group's arrays (module docstring)."""
    cos, sin = rope
    windowed, full = [], []
    # each windowed layer's gates of the tokens it evicts, wherever those are still cached
    evicted_gates = cache.read_gates(plan.evict_slot)
    for index in range(model.config.num_layers):
        if isinstance(model.layers, nnx.List):  # layerwise.unstack_layers: no slicing
            layer = model.layers[index]
        else:
            layer = jax.tree.map(lambda a, i=index: a[i], model.layers)  # static slices
        if index in cache.full_layers:
            arrays = cache.full_layer(len(full))
            x, arrays = layer.with_cache(x, cos, sin, arrays, full_plan, "full")  # no memory
            full.append(arrays)
        else:
            arrays = cache.window_layer(len(windowed))
            arrays["evicted_gates"] = evicted_gates[len(windowed)]
            x, arrays = layer.with_cache(x, cos, sin, arrays, plan, cache.mode)
            windowed.append(arrays)
    return x, {
        "k": tuple(a["k"] for a in windowed),
        "v": tuple(a["v"] for a in windowed),
        "gates": cache.write_gates([a["new_gates"] for a in windowed], plan.write_slot),
        # outside mode "ahn" the state is the cache's empty placeholder, untouched
        "state": tuple(a["state"] for a in windowed),
        "full_k": tuple(a["k"] for a in full),
        "full_v": tuple(a["v"] for a in full),
    }
