"""The constant-size decode cache: S sink slots plus a ring of W window slots per layer.

Token p lives in slot p if p < S, else in slot S + (p - S) mod W, its key stored after RoPE at its
absolute position. Token t evicts token t - W, which sits in exactly the slot token t will take:
the ring never moves data, and the cache never grows past S + W entries whatever the context.
Each slot also keeps the token's AHN write gates (docs/method.md §Inference), so the memory ingests
an evicted token without its hidden state; each layer keeps its AHN state [B, N, H, H] in fp32.

Every batch row shares the positions (no padding), as in the reference. `extend_plan` works out,
for a block of P new tokens, what each query sees, which token each one evicts and which token
each slot holds afterwards; decoding is the block P = 1, so prefill and decode share one path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from ahn_jax.config import MODES
from kernels.window_attention import visible


@struct.dataclass
class DecodeCache:
    """Stacked over layers: k, v [L, B, S+W, K, H]; gates {name: [L, B, S+W, N]} fp32; state
    [L, B, N, H, H] fp32; slot_pos [S+W] (absolute position held by each slot, -1 if empty);
    length: tokens seen so far. `window`, `sinks` and `mode` are static (they fix the shapes)."""

    k: jax.Array
    v: jax.Array
    gates: dict[str, jax.Array]
    state: jax.Array
    slot_pos: jax.Array
    length: jax.Array
    window: int = struct.field(pytree_node=False)
    sinks: int = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)

    @property
    def capacity(self) -> int:
        return self.sinks + self.window

    def layer_arrays(self) -> dict:
        return {"k": self.k, "v": self.v, "gates": self.gates, "state": self.state}

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))


@dataclasses.dataclass(frozen=True)
class ExtendPlan:
    """Bookkeeping for P new tokens at positions t0 .. t0+P-1 (all index into cache ++ new)."""

    positions: jax.Array  # [P] absolute positions of the new tokens
    mask: jax.Array  # [P, S+W+P] which cached or new key each new query sees
    evicting: jax.Array  # [P] whether token t evicts t - W into the memory (t >= S + W)
    evict_index: jax.Array  # [P] where the evicted token's k/v/gates are
    keep_index: jax.Array  # [S+W] what each slot holds afterwards
    slot_pos: jax.Array  # [S+W] the new slot positions


def slot_of(position, sinks: int, window: int):
    return jnp.where(position < sinks, position, sinks + (position - sinks) % window)


def _latest_in_slot(slot, end, sinks: int, window: int):
    """The last position < end that lives in `slot`, or -1."""
    # the first position to use a slot is the slot's own index; ring slots recur every W
    laps = jnp.where(slot < sinks, 0, (end - 1 - slot) // window)
    return jnp.where(slot < end, slot + laps * window, -1)


def extend_plan(cache: DecodeCache, num_new: int) -> ExtendPlan:
    """Where everything is when P = `num_new` tokens (positions t0 .. t0+P-1, t0 = tokens seen)
    join the cache; prefill and decode (P = 1) both go through it (docs/method.md §Inference).

    Indices point into `cache slots ++ new tokens` (S + W + P entries), the arrays the decoder
    layer concatenates for keys, values and gates. The layer attends and gathers from that
    concatenation and only then writes the slots back, so every query of the block still sees the
    old keys that later tokens of the same block overwrite.
    - mask: a key is visible if its slot is filled (or it is new) and the sink/window rule
      (docs/method.md §Method) holds between absolute positions; `slot_pos` gives each slot's
      position, so the ring's order never matters.
    - evicting / evict_index: token t writes t - W into the memory iff t - W >= S. If t - W came
      before this call it is still in its slot (the next token to take that slot is t itself),
      else it is new in this block (P > W), at S + W + (t - W - t0). Tokens that evict nothing
      get a clipped index whose item the layer masks out.
    - keep_index / slot_pos: afterwards each slot holds the newest position < t0 + P that maps
      to it: the new token if one landed there, else what it held.
    The plan is integer work on positions alone, shared by all layers and batch rows (no padding),
    so each layer only gathers and runs a masked attention."""
    S, W, capacity = cache.sinks, cache.window, cache.capacity
    t0 = cache.length
    positions = t0 + jnp.arange(num_new, dtype=jnp.int32)
    key_pos = jnp.concatenate([cache.slot_pos, positions])
    key_valid = jnp.concatenate([cache.slot_pos >= 0, jnp.ones((num_new,), bool)])
    mask = key_valid[None, :] & visible(positions[:, None], key_pos[None, :], W, S)
    evicted = positions - W
    evicting = evicted >= S
    in_cache = slot_of(jnp.maximum(evicted, 0), S, W)
    evict_index = jnp.where(evicted < t0, in_cache, capacity + evicted - t0)
    evict_index = jnp.clip(evict_index, 0, capacity + num_new - 1)
    latest = _latest_in_slot(jnp.arange(capacity, dtype=jnp.int32), t0 + num_new, S, W)
    fresh = latest >= t0
    return ExtendPlan(
        positions=positions,
        mask=mask,
        evicting=evicting,
        evict_index=evict_index,
        keep_index=jnp.where(fresh, capacity + latest - t0, jnp.arange(capacity)),
        slot_pos=jnp.where(fresh, latest, cache.slot_pos),
    )


def empty_cache(
    *,
    num_layers: int,
    batch_size: int,
    window: int,
    sinks: int,
    num_kv_heads: int,
    num_heads: int,
    head_dim: int,
    gate_names: tuple[str, ...],
    dtype,
    mode: str,
) -> DecodeCache:
    for name, value, low in (("batch_size", batch_size, 1), ("window", window, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an integer >= 0, got {sinks!r}")
    if mode not in MODES:
        raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
    gate_names = gate_names if mode == "ahn" else ()
    L, B, C = num_layers, batch_size, sinks + window
    kv_shape = (L, B, C, num_kv_heads, head_dim)
    return DecodeCache(
        k=jnp.zeros(kv_shape, dtype),
        v=jnp.zeros(kv_shape, dtype),
        # the memory's gate cache and state exist only in mode "ahn"
        gates={name: jnp.zeros((L, B, C, num_heads), jnp.float32) for name in gate_names},
        state=jnp.zeros((L, B, num_heads if gate_names else 0, head_dim, head_dim), jnp.float32),
        slot_pos=jnp.full((C,), -1, jnp.int32),
        length=jnp.zeros((), jnp.int32),
        window=window,
        sinks=sinks,
        mode=mode,
    )
