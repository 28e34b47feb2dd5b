"""The tiles of the KL and CE (training/losses.py): per-position functions of the logits summed per
sequence without ever forming the [T, V] logits, laid out so that on a mesh each device evaluates
its own rows against its own columns.

Positions go a tile of every sequence at a time (a `lax.scan` over the position tiles), so the
batch stays split over devices as the model's activations are (`batch` over data and fsdp); the
vocabulary goes a tile of every vocabulary shard at a time, so the head stays split as it is
(`vocab` over tensor), each step's log-sum-exp statistics combining across the shards in small
all-reduces of per-row values. Both scans run over a dimension no device holds a part of: tiling
the flattened B * T positions, as this did before, scanned over the split batch, and XLA gathered
every sequence's hidden states (and the whole head) onto every device, each device computing
every tile ("involuntary full rematerialization" warnings on a data x fsdp x tensor mesh).

Both bodies are `jax.checkpoint`ed: the backward pass recomputes a tile's logits instead of
storing them. Per device a step holds a few [seq_tile, vocab_tile] fp32 blocks: a step's position
tile per sequence is seq_tile over the sequences a device holds (at least one position: a device
holding more sequences than seq_tile scores one row of each per step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ahn_jax.model.sharding import constrain, partition_spec

# finite: the repeated vocabulary columns of the last tile, and the running max before any column
from kernels.common.masking import MASKED


def _ways(logical_axes, shape, dim: int) -> int:
    """Into how many parts `constrain(x, logical_axes)` splits dimension `dim` of an array of
    `shape` on the current mesh (1 outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    spec = partition_spec(logical_axes, shape, mesh)
    entry = spec[dim] if dim < len(spec) else None
    names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    return math.prod(mesh.shape[name] for name in names)


def _vocabulary_tiles(head_DV, vocab_tile):
    """(head_tile(start) -> [D, shards * tile], the vocabulary's shards, columns per shard, the
    tile): the head gathered over its embed split once (FSDP's gather-on-use) and, split over
    P vocabulary shards, viewed as [D, P, V / P], a tile taking the same columns of every shard
    (shard-major)."""
    D, V = head_DV.shape
    shards = _ways((None, "vocab"), (D, V), 1)
    columns = V // shards
    tile = min(vocab_tile, columns)
    head_DV = constrain(head_DV, (None, "vocab"))
    if shards == 1:  # the [D, 1, V] view made XLA:CPU's backward 30% slower (measured)

        def head_tile(start):
            return jax.lax.dynamic_slice_in_dim(head_DV, start, tile, axis=1)
    else:
        head = constrain(head_DV.reshape(D, shards, columns), (None, "vocab", None))

        def head_tile(start):
            return jax.lax.dynamic_slice_in_dim(head, start, tile, axis=2).reshape(D, -1)

    return head_tile, shards, columns, tile


def online_stats(rows, head_DV, vocab_tile, with_teacher, targets=None):
    """Per row of `rows` ([R, D] each): student (max, sum exp) and, with a teacher (rows[1]), its
    (max, sum exp) and sum_v exp(z_t - max_t) (z_t - z_s), each accumulated over vocabulary tiles;
    with `targets` ([R] ids, no teacher) also the student's logit of each row's target, picked
    from the tile that holds it (a gather of the head's target columns gathered the whole split
    vocabulary onto every device).

    Tiles (`_vocabulary_tiles`) are read with `dynamic_slice` (no padded or transposed copy), the
    last one shifted back to end at V / P with the columns it repeats masked."""
    head_tile, shards, columns, tile = _vocabulary_tiles(head_DV, vocab_tile)
    n_tiles = -(-columns // tile)
    n_rows = rows[0].shape[0]

    @jax.checkpoint
    def body(carry, index):
        start = jnp.minimum(index * tile, columns - tile)
        columns_DV = head_tile(start)
        fresh = jnp.tile(start + jnp.arange(tile) >= index * tile, shards)

        def logits(h):
            z = jnp.einsum("RD,DV->RV", h, columns_DV, preferred_element_type=jnp.float32)
            return jnp.where(fresh, z, MASKED)

        z_s = logits(rows[0])
        m_s, s_s = carry[:2]
        new_m_s = jnp.maximum(m_s, z_s.max(-1))
        s_s = s_s * jnp.exp(m_s - new_m_s) + jnp.exp(z_s - new_m_s[:, None]).sum(-1)
        if targets is not None:  # the tile's columns are shard-major, as `head_tile` lays them
            column = (jnp.arange(shards)[:, None] * columns + start + jnp.arange(tile)).ravel()
            hit = fresh & (column == targets[:, None])
            return (new_m_s, s_s, carry[2] + jnp.where(hit, z_s, 0.0).sum(-1)), None
        if not with_teacher:
            return (new_m_s, s_s), None
        z_t = logits(rows[1])
        m_t, s_t, cross = carry[2:]
        new_m_t = jnp.maximum(m_t, z_t.max(-1))
        rescale = jnp.exp(m_t - new_m_t)
        p_t = jnp.exp(z_t - new_m_t[:, None])
        s_t = s_t * rescale + p_t.sum(-1)
        cross = cross * rescale + (p_t * (z_t - z_s)).sum(-1)
        return (new_m_s, s_s, new_m_t, s_t, cross), None

    start = jnp.full((n_rows,), MASKED, jnp.float32)
    zero = jnp.zeros((n_rows,), jnp.float32)
    init = (start, zero, start, zero, zero) if with_teacher else (start, zero)
    if targets is not None:
        init = (start, zero, zero)
    stats, _ = jax.lax.scan(body, init, jnp.arange(n_tiles))
    return stats


def row_sums(per_row_fn, arrays, valid_BT, seq_tile):
    """Per-sequence sums [B] of `per_row_fn(rows...)` ([R, ...] each -> [R]) over the valid
    positions; `arrays` are [B, T, ...]. Each step takes one position tile of every sequence."""
    B, T = valid_BT.shape
    held = B // _ways(("batch",), (B,), 0)  # the sequences one device holds
    tile = max(1, min(T, seq_tile // held))
    n_tiles = -(-T // tile)

    def tiled(x):  # [B, T, ...] -> [B, n_tiles, tile, ...], the batch split as the model's
        x = jnp.pad(x, [(0, 0), (0, n_tiles * tile - T)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(B, n_tiles, tile, *x.shape[2:])
        return constrain(x, ("batch",) + (None,) * (x.ndim - 1))

    inputs = [tiled(a) for a in arrays]
    valid = tiled(valid_BT)  # the padding is never valid

    @jax.checkpoint
    def body(sums_B, index):
        rows = [jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False) for x in inputs]
        value = per_row_fn(*[r.reshape(B * tile, *r.shape[2:]) for r in rows]).reshape(B, tile)
        valid_rows = jax.lax.dynamic_index_in_dim(valid, index, axis=1, keepdims=False)
        return sums_B + jnp.sum(jnp.where(valid_rows, value, 0.0), axis=1), None

    sums, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32), jnp.arange(n_tiles))
    return sums
