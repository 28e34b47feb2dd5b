"""Where each new token goes in a decode cache's slots (ahn_jax/model/cache.py): `extend_plan` works
out, for a block of P new tokens per row, what each query sees, which token each one evicts into
the memory and which token each slot holds afterwards; decoding is the block P = 1. With
`decode="reference"`, a decode step's mask is the reference's instead
(`reference_dropped_position`, docs/evaluation.md "Reference-compatible decode")."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kernels.window_attention import visible

# The reference's decode drops this cache index at every step, whatever S (its attention is called
# without `num_attn_sinks`, whose default is 128): docs/evaluation.md "Reference-compatible decode".
REFERENCE_DROPPED_INDEX = 128


@dataclasses.dataclass(frozen=True)
class ExtendPlan:
    """Bookkeeping for P new tokens per row, row b at positions length[b] .. length[b] + P - 1, of
    which the first `new[b]` are real (the rest right-padding). With P > 1 the layer reads
    `cache slots ++ new tokens` (C + P entries, C the group's slots) and writes afterwards; with
    P = 1 (`write_first`) it writes the token to its slot first and reads the C slots alone."""

    positions: jax.Array  # [B, P] absolute positions of the new tokens
    mask: jax.Array  # [B, P, C+P], or [B, 1, C] if write_first: which key each new query sees
    evicting: jax.Array  # [B, P] whether token t evicts t - W into the memory (t >= S + W, real)
    evict_index: jax.Array  # [B, P] where the evicted token's k/v/gates are
    write_slot: jax.Array  # [B, P] the slot each new token is written to; C (dropped) if none
    slot_pos: jax.Array  # [B, C] the new slot positions

    @property
    def write_first(self) -> bool:
        return self.positions.shape[1] == 1

    @property
    def evict_slot(self) -> jax.Array:
        """[B, P] `evict_index` clipped to the C slots: where an evicted token still cached is
        (read for every token, used where `evict_index` < C; the rest come from the new ones)."""
        return jnp.minimum(self.evict_index, self.slot_pos.shape[1] - 1)


def slot_of(position, sinks: int, ring: int):
    """The slot of `position` with `sinks` sink slots and a ring of `ring` slots after them."""
    return jnp.where(position < sinks, position, sinks + (position - sinks) % ring)


def reference_dropped_position(t, window: int, sinks: int):
    """The position the reference's decode step at t leaves out of attention.

    Its cache is a list ordered by position: the sinks [0, S) and then [max(S, t - W), t] (the
    token being evicted still in it, the new token appended); it drops list index 128. So the
    dropped token is 128 itself when S > 128, else the one at offset 128 - S (from 0) after the
    sinks, which is the evicted token t - W exactly when S = 128 and the cache is full. Beyond t
    (a list of at most 128 entries) nothing is dropped."""
    if sinks > REFERENCE_DROPPED_INDEX:
        return jnp.full_like(t, REFERENCE_DROPPED_INDEX)
    return jnp.maximum(sinks, t - window) + REFERENCE_DROPPED_INDEX - sinks


def extend_plan(
    slot_pos, length, *, window: int, sinks: int, num_new: int, new=None, reference=False
) -> ExtendPlan:
    """Where everything is when P = `num_new` tokens per row join a group of slots (`slot_pos`
    [B, C], `length` [B]; the slots after the S sinks form the ring, W + 1 of them in a windowed
    layer); `new` [B] (default P) says how many of them are real, the rest being right-padding
    that neither enters the cache nor the memory. Prefill and decode (P = 1) both go through it
    (docs/method.md §Inference).

    - mask: a key is visible if its slot is filled (or it is new) and the sink/window rule
      (docs/method.md §Method) holds between absolute positions; `slot_pos` gives each slot's
      position, so the ring's order never matters. Padding only sees keys up to itself (causal),
      so no real query sees padding. With P > 1 the keys are `cache slots ++ new tokens` (every
      query of the block still sees the old keys that later tokens of it overwrite); with P = 1
      they are the slots after the token's write, its own among them.
    - `reference` (a decode step of `decode="reference"`): the reference's mask instead — the
      evicted token t - W visible too, `reference_dropped_position` hidden.
    - evicting / evict_index: token t writes t - W into the memory iff t - W >= S. If t - W came
      before this call it is still in its slot (the ring holds W + 1: the next token to take
      that slot is t + 1), else it is new in this block (P > W), at C + (t - W - t0).
    - write_slot / slot_pos: afterwards each slot holds the newest real position that maps to it:
      a new token is written to its slot unless a later real token of the block takes the same
      slot (P > ring) or it is padding (then C: a scatter drops it), so each call writes O(P)
      slots, not the whole cache."""
    S, W = sinks, window
    B, capacity = slot_pos.shape
    ring = capacity - S
    new = jnp.full((B,), num_new, jnp.int32) if new is None else jnp.asarray(new, jnp.int32)
    t0 = length[:, None]  # [B, 1]
    positions = t0 + jnp.arange(num_new, dtype=jnp.int32)[None, :]
    real = jnp.arange(num_new)[None, :] < new[:, None]
    end = t0 + new[:, None]
    # written unless a later real token of the block takes the same slot
    kept = real & ((positions < S) | (positions >= end - ring))
    write_slot = jnp.where(kept, slot_of(positions, S, ring), capacity)
    rows = jnp.arange(B)[:, None]
    after = slot_pos.at[rows, write_slot].set(positions, mode="drop")
    if num_new == 1:  # written first: the slots alone hold every key the token sees
        key_pos, key_filled = after, after >= 0
    else:
        key_pos = jnp.concatenate([slot_pos, positions], axis=1)
        key_filled = jnp.concatenate([slot_pos >= 0, jnp.ones((B, num_new), bool)], 1)
    key_pos, key_filled, q_pos = key_pos[:, None, :], key_filled[:, None, :], positions[:, :, None]
    # the reference's decode also sees t - W (a window of W + 1), less its dropped entry
    seen = visible(q_pos, key_pos, W + 1 if reference else W, S)
    if reference:
        seen &= key_pos != reference_dropped_position(q_pos, W, S)
    evicted = positions - W
    in_cache = slot_of(jnp.maximum(evicted, 0), S, ring)
    evict_index = jnp.where(evicted < t0, in_cache, capacity + evicted - t0)
    return ExtendPlan(
        positions=positions,
        mask=key_filled & seen,
        evicting=(evicted >= S) & real,
        evict_index=jnp.clip(evict_index, 0, capacity + num_new - 1),
        write_slot=write_slot,
        slot_pos=after,
    )
