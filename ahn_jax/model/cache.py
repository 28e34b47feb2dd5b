"""The constant-size decode cache: S sink slots plus a ring of W + 1 window slots per layer.

Token p lives in slot p if p < S, else in slot S + (p - S) mod (W + 1), its key stored after RoPE
at its absolute position. Token t evicts token t - W into the memory and takes the slot of
t - W - 1, evicted one step earlier: the ring never moves data, and the cache never grows past
S + W + 1 entries whatever the context. The one slot more than the window holds is what lets a
decode step write its token first and only then read (the evicted token is still in its slot, and
no read of a slot precedes a write to it), so XLA updates the donated cache in place instead of
copying it (docs/benchmarks.md, ragged decode). Each slot also keeps the token's AHN write gates
(docs/method.md §Inference), so the memory ingests an evicted token without its hidden state;
each layer keeps its AHN state [B, N, H, H] in fp32.

Every layer has k, v and state arrays of its own (tuples over layers, not one stacked array): the
decode step runs its layers unrolled, each reading and writing its own buffers, where a layer scan
over a stacked cache copies each layer's slice out for the products. Keys are stored slots-last
[B, K, H, C], the layout in which XLA:CPU's q·k product reads them without a transpose (XLA:TPU
chooses the physical layouts of its arguments itself). The gates of all layers share one array
[B, C, G], a slot's G = N x layers x gate names values side by side (`gate_width`): a layer's own
gates are a row of N (16 for Qwen2.5-3B) fp32 per slot, which XLA:TPU pads to 128 lanes and
copies each step to scatter into (the gate arrays of a 3B decode step: 5.5 GiB read and written
per chip and step, against 0.3 MiB for the shared one; docs/benchmarks.md). Every windowed layer
uses the same slots, so one gather before the layers reads what each evicts and one scatter after
them writes the new tokens' gates.

Each batch row has its own length and slot positions (ragged batches: prompts of different
lengths prefill together, right-padded, and decode on from their own positions). `extend_plan`
works out, for a block of P new tokens per row, what each query sees, which token each one evicts
and which token each slot holds afterwards; decoding is the block P = 1, so prefill and decode
share one path (ahn_jax/model/slots.py).

Layers kept as full attention (`ModelConfig.full_attention_layers`) keep a second group of slots
of `max_length` positions (the same ring with W = max_length and no sinks, so it never wraps
within the context it was sized for): their K/V grow with the context, as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ahn_jax.config import MODES
from ahn_jax.model import inputs
from ahn_jax.model.sharding import constrain

DECODES = ("exact", "reference")


# Each cache array's logical axes (model/sharding.py's rules place them on a mesh): k, v and state
# one array per layer, the gates one for all; rows split over the mesh like a batch
CACHE_AXES = {
    "k": ("batch", "kv_heads", "head_dim", "length"),
    "v": ("batch", "length", "kv_heads", "head_dim"),
    # all layers' gates side by side, padded (gate_width): a tensor split of that row cuts heads
    # apart unless it happens to line up (Qwen2.5-7B, tensor=8: 131 collectives a step against
    # 29 replicated), and a step exchanges only the new rows [B, P, G] to keep it whole
    "gates": ("batch", "length", None),
    "state": ("batch", "heads", "head_dim", None),
    "slot_pos": ("batch", "length"),
    "length": ("batch",),
}
CACHE_AXES |= {"full_k": CACHE_AXES["k"], "full_v": CACHE_AXES["v"],
               "full_slot_pos": CACHE_AXES["slot_pos"]}  # fmt: skip


def check_decode(decode: str, mode: str) -> None:
    """ValueError unless `decode` is one of DECODES and fits `mode`: "reference" reproduces the
    reference's AHN decode, and its full-attention and sliding-window baselines drop nothing."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if decode == "reference" and mode != "ahn":
        raise ValueError(
            f'decode "reference" reproduces the reference\'s AHN decode (cache index 128 dropped '
            f"each step); its full-attention and sliding-window baselines drop nothing, so mode "
            f'{mode!r} takes decode "exact"'
        )


@struct.dataclass
class DecodeCache:
    """One entry per windowed layer (C = S + W + 1 slots): k [B, K, H, C] (slots last), v
    [B, C, K, H]; state per layer [B, N, H, H] fp32 (N = 0 outside mode "ahn"); gates [B, C, G]
    fp32 for all windowed layers, G = N x layers x len(gate_names) (0 outside mode "ahn",
    `layer_gates` unpacks it); slot_pos [B, C] (absolute position held by each slot, -1 if
    empty); length [B]: tokens seen so far by each row. The full-attention layers' group: full_k
    [B, K, H, M] and full_v [B, M, K, H] per such layer and full_slot_pos [B, M] (M = max_length),
    `full_layers` their indices. `window`, `sinks`, `mode`, `decode`, `full_layers` and
    `gate_names` are static (they fix shapes or the program). Every array keeps its batch rows on
    axis 0."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    gates: jax.Array
    state: tuple[jax.Array, ...]
    slot_pos: jax.Array
    length: jax.Array
    full_k: tuple[jax.Array, ...]
    full_v: tuple[jax.Array, ...]
    full_slot_pos: jax.Array
    window: int = struct.field(pytree_node=False)
    sinks: int = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)
    decode: str = struct.field(pytree_node=False, default="exact")
    full_layers: tuple[int, ...] = struct.field(pytree_node=False, default=())
    gate_names: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def capacity(self) -> int:
        """Slots of each windowed layer: S + W + 1."""
        return self.slot_pos.shape[1]

    @property
    def full_capacity(self) -> int:
        return self.full_slot_pos.shape[1]

    @property
    def batch_size(self) -> int:
        return self.length.shape[0]

    def window_layer(self, i: int) -> dict:
        """The k, v and state of windowed layer i (its index among the windowed layers)."""
        return {"k": self.k[i], "v": self.v[i], "state": self.state[i]}

    def full_layer(self, i: int) -> dict:
        """The arrays of full-attention layer i (its index among `full_layers`): no memory."""
        return {"k": self.full_k[i], "v": self.full_v[i], "state": None}

    def layer_gates(self, gates_BPG) -> list[dict]:
        """Rows of `gates` [B, P, G] (`read_gates`) as each windowed layer's {name: [B, P, N]}."""
        B, P, _ = gates_BPG.shape
        names, L = self.gate_names, len(self.k)
        if not names or not L:  # no memory, or no windowed layer
            return [{} for _ in range(L)]
        N = self.state[0].shape[1]
        # heads outermost, then layers, then gates; the lanes past N x L x names are padding
        split = gates_BPG[..., : N * L * len(names)].reshape(B, P, N, L, len(names))
        return [{n: split[:, :, :, i, j] for j, n in enumerate(names)} for i in range(L)]

    def read_gates(self, index_BP) -> list[dict]:
        """Every windowed layer's gates {name: [B, P, N]} held in slots `index_BP` [B, P].

        With one row, XLA:CPU fuses a plain gather of the shared array into the layers that use
        it and then copies the whole array twice before the step's write (36 layers, S + W =
        32,768: a decode step 1.7x slower); the indices given twice keep it a gather of its own,
        as `_scatter_slots` does for the write."""
        P = index_BP.shape[1]
        if index_BP.shape[0] == 1:
            return self.layer_gates(gather_rows(self.gates, jnp.tile(index_BP, 2))[:, :P])
        return self.layer_gates(gather_rows(self.gates, index_BP))

    def write_gates(self, new_gates: list[dict], slot_BP) -> jax.Array:
        """`gates` with each windowed layer's new {name: [B, P, N]} written to slots `slot_BP`."""
        if not self.gate_names or not new_gates:  # no memory, or no windowed layer
            return self.gates
        rows = [jnp.stack([g[n] for n in self.gate_names], axis=-1) for g in new_gates]
        items = jnp.stack(rows, axis=-2)  # [B, P, N, L, names]
        items = items.reshape(items.shape[:2] + (-1,))
        padding = self.gates.shape[-1] - items.shape[-1]
        items = jnp.pad(items, ((0, 0), (0, 0), (0, padding)))
        # the new rows made whole on every chip before the write, and the written array kept as
        # the cache lies: else XLA wrote each chip's heads (the gate projections split over
        # `tensor`) and all-gathered the whole array back every step (3B, fsdp=2 x tensor=4:
        # [8, 32769, 288] -> 1152 per chip, and a relayout copy of it)
        items = constrain(items, CACHE_AXES["gates"])
        return constrain(_scatter_slots(self.gates, items, slot_BP), CACHE_AXES["gates"])

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))

    def rows(self, index) -> DecodeCache:
        """The cache of the batch rows `index` (int array) alone."""
        return jax.tree.map(lambda a: jnp.take(a, index, axis=0), self)

    def with_rows(self, index, part: DecodeCache) -> DecodeCache:
        """This cache with rows `index` replaced by `part`'s (a `rows(index)` cache, advanced)."""
        return jax.tree.map(lambda whole, new: whole.at[index].set(new), self, part)


def write_slots(arrays: dict, new: dict, slot_BP) -> dict:
    """One layer's arrays (`DecodeCache.window_layer`) with the new tokens' k, v [B, P, K, H]
    (`new`) written to their slots `slot_BP` (a slot of C drops the item), where the cache lies
    on a mesh: with K/V heads replicated over a tensor axis (fewer than its size), XLA otherwise
    wrote each chip's head slice and all-gathered the layer's whole cache back every step
    (Qwen2.5-3B, fsdp=2 x tensor=4: 72 cache copies a step; docs/benchmarks.md)."""
    written = {
        "k": _scatter_slots(arrays["k"], new["k"], slot_BP, slots_last=True),
        "v": _scatter_slots(arrays["v"], new["v"], slot_BP),
    }
    return {**arrays, **{name: constrain(x, CACHE_AXES[name]) for name, x in written.items()}}


def _scatter_slots(cached, items, slot_BP, slots_last=False):
    """cached [B, C, ...] (or [B, ..., C] `slots_last`) with items [B, P, ...] in slots `slot_BP`.

    With one row, XLA rewrites a scatter into a bounds-checked dynamic-update-slice which XLA:CPU
    then fuses with its reader's reshape and runs on two copies of the buffer; the same update
    given twice keeps it a scatter, done in place (docs/benchmarks.md, ragged decode)."""
    rows = jnp.broadcast_to(jnp.arange(slot_BP.shape[0])[:, None], slot_BP.shape)
    items = items.astype(cached.dtype)
    if slot_BP.shape[0] == 1:
        rows, slot_BP, items = (jnp.concatenate([x, x], axis=1) for x in (rows, slot_BP, items))
    if slots_last:  # k [B, K, H, C]: items [B, P, K, H] go to [rows, :, :, slots]
        return cached.at[rows, :, :, slot_BP].set(items, mode="drop")
    return cached.at[rows, slot_BP].set(items, mode="drop")


def gather_rows(x, index_BP, axis: int = 0):
    """Row b of x [B, ...] at its own indices index_BP[b] along `axis` (of the row)."""
    return jax.vmap(lambda row, index: jnp.take(row, index, axis=axis))(x, index_BP)


def gather_slots(arrays: dict, index_BP) -> dict:
    """The k, v [B, P, K, H] held in slots `index_BP` [B, P] of one layer."""
    return {
        # k [B, K, H, C] -> [B, K, H, P] -> [B, P, K, H]
        "k": jnp.moveaxis(gather_rows(arrays["k"], index_BP, axis=2), -1, 1),
        "v": gather_rows(arrays["v"], index_BP),
    }


def gate_width(num_heads: int, windowed_layers: int, gates_per_head: int) -> int:
    """Values per slot of the shared gate array: N x layers x gates, rounded up to whole 128-lane
    rows (a TPU vreg's) from 128 on. With a ragged last row XLA:TPU stores the array slots-last
    and copies it into a slots-first layout and back to scatter each step's row (Qwen2.5-3B's DN
    gates, 576 wide: two copies of the whole array a step; padded to 640, none). Narrower rows
    stay as they are: tiny models would multiply their gates to save nothing."""
    width = num_heads * windowed_layers * gates_per_head
    return width if width < 128 else -(-width // 128) * 128


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
    """An empty cache of S + W + 1 slots per windowed layer; `full_layers` (of the `num_layers`)
    get `max_length` slots of their own."""
    batch_size = inputs.count(batch_size, "batch_size", 1)
    window = inputs.count(window, "window", 1)
    sinks = inputs.count(sinks, "sinks", 0)
    if mode not in MODES:
        raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
    if mode == "full" and sinks:
        raise ValueError(f"mode 'full' attends every token: its cache takes no sinks, got {sinks}")
    check_decode(decode, mode)
    if full_layers:
        if max_length is None:
            raise ValueError(
                f"layers {list(full_layers)} keep full attention, whose cache holds the whole "
                "context: init_cache needs max_length (prompt + new tokens)"
            )
        max_length = inputs.count(max_length, "max_length", 1)
    gate_names = gate_names if mode == "ahn" else ()
    L, B, C = num_layers - len(full_layers), batch_size, sinks + window + 1
    M = max_length if full_layers else 0
    K, H, N = num_kv_heads, head_dim, num_heads

    def per_layer(count, shape, dtype):
        return tuple(jnp.zeros(shape, dtype) for _ in range(count))

    return DecodeCache(
        k=per_layer(L, (B, K, H, C), dtype),
        v=per_layer(L, (B, C, K, H), dtype),
        # the memory's gate cache and state exist only in mode "ahn"
        gates=jnp.zeros((B, C, gate_width(N, L, len(gate_names))), jnp.float32),
        state=per_layer(L, (B, N if gate_names else 0, H, H), jnp.float32),
        slot_pos=jnp.full((B, C), -1, jnp.int32),
        length=jnp.zeros((B,), jnp.int32),
        full_k=per_layer(len(full_layers), (B, K, H, M), dtype),
        full_v=per_layer(len(full_layers), (B, M, K, H), dtype),
        full_slot_pos=jnp.full((B, M), -1, jnp.int32),
        window=window,
        sinks=sinks,
        mode=mode,
        decode=decode,
        full_layers=tuple(full_layers),
        gate_names=tuple(gate_names),
    )
