"""The constant-size decode cache: S sink slots plus a ring of W window slots per layer.

Token p lives in slot p if p < S, else in slot S + (p - S) mod W, its key stored after RoPE at its
absolute position. Token t evicts token t - W, which sits in exactly the slot token t will take:
the ring never moves data, and the cache never grows past S + W entries whatever the context.
Each slot also keeps the token's AHN write gates (docs/method.md §Inference), so the memory ingests
an evicted token without its hidden state; each layer keeps its AHN state [B, N, H, H] in fp32.

Each batch row has its own length and slot positions (ragged batches: prompts of different
lengths prefill together, right-padded, and decode on from their own positions). `extend_plan`
works out, for a block of P new tokens per row, what each query sees, which token each one evicts
and which token each slot holds afterwards; decoding is the block P = 1, so prefill and decode
share one path.

Layers kept as full attention (`ModelConfig.full_attention_layers`) keep a second group of slots
of `max_length` positions (the same ring with W = max_length and no sinks, so it never wraps
within the context it was sized for): their K/V grow with the context, as in the reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from ahn_jax.config import MODES
from kernels.window_attention import visible

DECODES = ("exact", "reference")
# The reference's decode drops this cache index at every step, whatever S (its attention is called
# without `num_attn_sinks`, whose default is 128): docs/evaluation.md "Reference-compatible decode".
REFERENCE_DROPPED_INDEX = 128


@struct.dataclass
class DecodeCache:
    """Stacked over layers: k, v [L, B, S+W, K, H]; gates {name: [L, B, S+W, N]} fp32; state
    [L, B, N, H, H] fp32; slot_pos [B, S+W] (absolute position held by each slot, -1 if empty);
    length [B]: tokens seen so far by each row. The full-attention layers' group: full_k, full_v
    [L_full, B, M, K, H] and full_slot_pos [B, M] (M = max_length; all empty arrays without such
    layers), `full_layers` their indices. L counts the other layers. `window`, `sinks`, `mode`,
    `decode` and `full_layers` are static (they fix shapes or the program)."""

    k: jax.Array
    v: jax.Array
    gates: dict[str, jax.Array]
    state: jax.Array
    slot_pos: jax.Array
    length: jax.Array
    full_k: jax.Array
    full_v: jax.Array
    full_slot_pos: jax.Array
    window: int = struct.field(pytree_node=False)
    sinks: int = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)
    decode: str = struct.field(pytree_node=False, default="exact")
    full_layers: tuple[int, ...] = struct.field(pytree_node=False, default=())

    @property
    def capacity(self) -> int:
        return self.sinks + self.window

    @property
    def full_capacity(self) -> int:
        return self.full_k.shape[2]

    def layer_arrays(self) -> dict:
        return {"k": self.k, "v": self.v, "gates": self.gates, "state": self.state}

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))

    def rows(self, index) -> DecodeCache:
        """The cache of the batch rows `index` (int array) alone."""
        return self.replace(
            **{name: jax.tree.map(lambda a, axis=axis: jnp.take(a, index, axis=axis),
                                  getattr(self, name))
               for name, axis in _BATCH_AXIS.items()}
        )  # fmt: skip

    def with_rows(self, index, part: DecodeCache) -> DecodeCache:
        """This cache with rows `index` replaced by `part`'s (a `rows(index)` cache, advanced)."""

        def put(whole, new, axis):
            where = (slice(None),) * axis + (index,)
            return whole.at[where].set(new)

        return self.replace(
            **{name: jax.tree.map(lambda w, n, axis=axis: put(w, n, axis), getattr(self, name),
                                  getattr(part, name))
               for name, axis in _BATCH_AXIS.items()}
        )  # fmt: skip


# where each array of a DecodeCache keeps its batch rows
_BATCH_AXIS = {"k": 1, "v": 1, "gates": 1, "state": 1, "slot_pos": 0, "length": 0,
               "full_k": 1, "full_v": 1, "full_slot_pos": 0}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ExtendPlan:
    """Bookkeeping for P new tokens per row, row b at positions length[b] .. length[b] + P - 1, of
    which the first `new[b]` are real (the rest right-padding). Indices point into
    `cache slots ++ new tokens` (C + P entries, C the group's slots)."""

    positions: jax.Array  # [B, P] absolute positions of the new tokens
    mask: jax.Array  # [B, P, C+P] which cached or new key each new query sees
    evicting: jax.Array  # [B, P] whether token t evicts t - W into the memory (t >= S + W, real)
    evict_index: jax.Array  # [B, P] where the evicted token's k/v/gates are
    write_slot: jax.Array  # [B, P] the slot each new token is written to; C (dropped) if none
    slot_pos: jax.Array  # [B, C] the new slot positions


def slot_of(position, sinks: int, window: int):
    return jnp.where(position < sinks, position, sinks + (position - sinks) % window)


def reference_dropped_position(t, window: int, sinks: int):
    """The position the reference's decode step at t leaves out of attention.

    Its cache is a list ordered by position: the sinks [0, S) and then [max(S, t - W), t] (the
    token being evicted still in it, the new token appended); it drops list index 128. So the
    dropped token is 128 itself when S > 128, else the (128 - S)-th after the sinks, which is the
    evicted token t - W exactly when S = 128 and the cache is full. Beyond t nothing is dropped."""
    if sinks > REFERENCE_DROPPED_INDEX:
        return jnp.full_like(t, REFERENCE_DROPPED_INDEX)
    return jnp.maximum(sinks, t - window) + REFERENCE_DROPPED_INDEX - sinks


def extend_plan(
    slot_pos, length, *, window: int, sinks: int, num_new: int, new=None, reference=False
) -> ExtendPlan:
    """Where everything is when P = `num_new` tokens per row join a group of slots (`slot_pos`
    [B, C], `length` [B]); `new` [B] (default P) says how many of them are real, the rest being
    right-padding that neither enters the cache nor the memory. Prefill and decode (P = 1) both go
    through it (docs/method.md §Inference).

    The layer attends and gathers from `cache slots ++ new tokens` and only then writes the slots
    back, so every query of the block still sees the old keys that later tokens overwrite.
    - mask: a key is visible if its slot is filled (or it is new) and the sink/window rule
      (docs/method.md §Method) holds between absolute positions; `slot_pos` gives each slot's
      position, so the ring's order never matters. Padding only sees keys up to itself (causal),
      so no real query sees padding and every query sees at least itself.
    - `reference` (a decode step of `decode="reference"`): the reference's mask instead — the
      evicted token t - W visible too, `reference_dropped_position` hidden.
    - evicting / evict_index: token t writes t - W into the memory iff t - W >= S. If t - W came
      before this call it is still in its slot (the next token to take that slot is t itself),
      else it is new in this block (P > W), at C + (t - W - t0).
    - write_slot / slot_pos: afterwards each slot holds the newest real position that maps to it:
      a new token is written to its slot unless a later real token of the block takes the same
      slot (P > W) or it is padding (then C: a scatter drops it), so each call writes O(P) slots,
      not the whole cache."""
    S, W = sinks, window
    B, capacity = slot_pos.shape
    new = jnp.full((B,), num_new, jnp.int32) if new is None else jnp.asarray(new, jnp.int32)
    t0 = length[:, None]  # [B, 1]
    positions = t0 + jnp.arange(num_new, dtype=jnp.int32)[None, :]
    real = jnp.arange(num_new)[None, :] < new[:, None]
    key_pos = jnp.concatenate([slot_pos, positions], axis=1)[:, None, :]
    key_filled = jnp.concatenate([slot_pos >= 0, jnp.ones((B, num_new), bool)], 1)[:, None, :]
    q_pos = positions[:, :, None]
    # the reference's decode also sees t - W (a window of W + 1), less its dropped entry
    seen = visible(q_pos, key_pos, W + 1 if reference else W, S)
    if reference:
        seen &= key_pos != reference_dropped_position(q_pos, W, S)
    evicted = positions - W
    in_cache = slot_of(jnp.maximum(evicted, 0), S, W)
    evict_index = jnp.where(evicted < t0, in_cache, capacity + evicted - t0)
    end = t0 + new[:, None]
    kept = real & ((positions < S) | (positions >= end - W))  # no later real token takes its slot
    write_slot = jnp.where(kept, slot_of(positions, S, W), capacity)
    rows = jnp.arange(B)[:, None]
    return ExtendPlan(
        positions=positions,
        mask=key_filled & seen,
        evicting=(evicted >= S) & real,
        evict_index=jnp.clip(evict_index, 0, capacity + num_new - 1),
        write_slot=write_slot,
        slot_pos=slot_pos.at[rows, write_slot].set(positions, mode="drop"),
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
    decode: str = "exact",
    full_layers: tuple[int, ...] = (),
    max_length: int | None = None,
) -> DecodeCache:
    """An empty cache; `full_layers` (of the `num_layers`) get `max_length` slots of their own."""
    for name, value, low in (("batch_size", batch_size, 1), ("window", window, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an integer >= 0, got {sinks!r}")
    if mode not in MODES:
        raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if full_layers and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(
            f"layers {list(full_layers)} keep full attention, whose cache holds the whole context: "
            f"init_cache needs max_length (prompt + new tokens), got {max_length!r}"
        )
    gate_names = gate_names if mode == "ahn" else ()
    L, B, C = num_layers - len(full_layers), batch_size, sinks + window
    kv_shape = (L, B, C, num_kv_heads, head_dim)
    M = max_length if full_layers else 0
    full_shape = (len(full_layers), B, M, num_kv_heads, head_dim)
    return DecodeCache(
        k=jnp.zeros(kv_shape, dtype),
        v=jnp.zeros(kv_shape, dtype),
        # the memory's gate cache and state exist only in mode "ahn"
        gates={name: jnp.zeros((L, B, C, num_heads), jnp.float32) for name in gate_names},
        state=jnp.zeros((L, B, num_heads if gate_names else 0, head_dim, head_dim), jnp.float32),
        slot_pos=jnp.full((B, C), -1, jnp.int32),
        length=jnp.zeros((B,), jnp.int32),
        full_k=jnp.zeros(full_shape, dtype),
        full_v=jnp.zeros(full_shape, dtype),
        full_slot_pos=jnp.full((B, M), -1, jnp.int32),
        window=window,
        sinks=sinks,
        mode=mode,
        decode=decode,
        full_layers=tuple(full_layers),
    )
